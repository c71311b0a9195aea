"""Hyperparameter search: ``deepworks tune CONFIG.yaml`` over the config's ``tune`` section.

``space.py`` reads and checks the search space against the config schema; ``study.py`` runs the
study on Optuna (samplers, pruners, storage, heartbeats and retries), each trial a normal run
directory trained by :func:`deepworks.pipeline.train`; ``results.py`` writes the table,
``best.yaml``, the importances and ``study.html``.
"""

from deepworks.tune.space import Dimension, SearchSpace, parse_space
from deepworks.tune.study import PRUNERS, SAMPLERS, PruneOnPlateau, redact, tune

__all__ = ["tune", "parse_space", "SearchSpace", "Dimension", "PruneOnPlateau", "SAMPLERS", "PRUNERS", "redact"]
