"""Experiment trackers: where a run's numbers go besides its run directory (``train.track``).

A :class:`Tracker` is a Trainer callback with two calls more, so it sees a run at three points:

- its start: :meth:`Tracker.describe` (before training: the resolved config as flat params with
  dotted keys, ``train.optimizer.lr``, and tags), then the Trainer's ``on_train_begin``, which opens
  the tracker's run, or re-opens it when the Trainer resumes;
- each epoch's end: ``on_epoch_end``, the numbers of the epoch's ``metrics.jsonl`` line at step = epoch;
- its end: :meth:`Tracker.end`, the final metrics and the run's files, called by whoever made the
  tracker: the Trainer for those it builds from ``train.track``, the pipeline for a run's (after the
  test split and the report), a study for its trials'.

:class:`MlflowTracker` (``train.track: mlflow``) and
:class:`~deepworks.training.tensorboard.TensorBoardLogger` (``tensorboard``) implement it. The run
directory stays the record of truth: a tracker that cannot reach its server warns once and sends
nothing more, and training goes on.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepworks.errors import ConfigError
from deepworks.runs import atomic_write
from deepworks.training.callbacks import Tracker

if TYPE_CHECKING:
    from deepworks.config import MlflowConfig, TrainConfig
    from deepworks.training.trainer import Trainer

__all__ = ["Tracker", "MlflowTracker", "tracker_names", "check_trackers", "build_trackers", "flat_params",
           "final_metrics", "MLFLOW_RECORD"]

MLFLOW_FIX = "pip install 'deepworks[mlflow]' (or pip install mlflow), or remove mlflow from train.track"
MLFLOW_RECORD = "mlflow.json"  # in the run directory: the MLflow run it logs to, re-opened by --resume
PROBE_SECONDS = 5.0  # how long the start waits for a tracking server to answer at all


def tracker_names(config: TrainConfig) -> list[str]:
    """The trackers a training config asks for: ``train.track``, and tensorboard with ``train.tensorboard: true``."""
    names = list(config.track)
    if config.tensorboard and "tensorboard" not in names:
        names.append("tensorboard")
    return names


def mlflow_module() -> Any:
    """``mlflow``; a :class:`ConfigError` naming the key and the fix when it is not installed."""
    try:
        import mlflow
    except ImportError as exc:
        raise ConfigError(
            f"train.track: mlflow needs the mlflow package, which cannot be imported ({exc}). Fix: {MLFLOW_FIX}."
        ) from None
    return mlflow


def check_trackers(config: TrainConfig) -> None:
    """Refuse a tracker whose package is missing, before any work (a ConfigError with the fix)."""
    names = tracker_names(config)
    if "tensorboard" in names:
        from deepworks.training.tensorboard import summary_writer_class

        summary_writer_class()
    if "mlflow" in names:
        mlflow_module()


def build_trackers(config: TrainConfig, mlflow: MlflowConfig | None = None, *, skip: Iterable[str] = (),
                   default_experiment: str | None = None) -> list[Tracker]:
    """A tracker for each name of :func:`tracker_names` but those in ``skip`` (given by the caller)."""
    from deepworks.training.tensorboard import TensorBoardLogger

    trackers: list[Tracker] = []
    for name in tracker_names(config):
        if name in set(skip):
            continue
        if name == "tensorboard":
            trackers.append(TensorBoardLogger(config.tensorboard_every))
        elif name == "mlflow":
            trackers.append(MlflowTracker.from_config(mlflow, default_experiment))
    return trackers


_UNSAFE = re.compile(r"[^\w\-. /:]")  # what MLflow accepts in a param or metric name


def flat_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as flat params: dotted keys, every value as ``str()`` writes it
    (``{"train": {"epochs": 3}}`` -> ``{"train.epochs": "3"}``); an empty section has no key."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = prefix + _UNSAFE.sub("_", str(key))
        if isinstance(value, Mapping):
            out.update(flat_params(value, name + "."))
        else:
            out[name] = str(value)
    return out


def _numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    return {prefix + _UNSAFE.sub("_", k): float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def final_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The final numbers of a ``summary.json``: the kept model's figures as ``final_train_*`` and
    ``final_val_*`` (the per-epoch ``train_*``/``val_*`` keys stay one value per epoch), the test
    split's as ``test_*``, and ``epochs_run``, ``best_epoch``, ``wall_seconds``."""
    out = _numbers(summary.get("test") or {}, "test_")
    for split in ("train", "val"):
        out.update(_numbers(summary.get(split) or {}, f"final_{split}_"))
    out.update(_numbers({k: summary.get(k) for k in ("epochs_run", "best_epoch", "wall_seconds")}))
    return out


def _recorded_run(record: Path) -> str | None:
    """The MLflow run id in ``RUN_DIR/mlflow.json``; None when there is none (or it cannot be read:
    the resumed run then starts a new MLflow run, and sends it every epoch of metrics.jsonl)."""
    try:
        run_id = json.loads(record.read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return run_id if isinstance(run_id, str) else None


def _shown(uri: str) -> str:
    """A tracking URI without a password in it (for messages)."""
    return re.sub(r"//[^/@]*@", "//***@", uri)


class MlflowTracker(Tracker):
    """Logs a run to MLflow through ``MlflowClient`` (no global active run, so runs of one process
    do not mix): the described params and tags at the start, each epoch's numbers at step = epoch,
    the final metrics and files at the end.

    ``tracking_uri`` and ``experiment`` default to ``MLFLOW_TRACKING_URI`` and
    ``MLFLOW_EXPERIMENT_NAME`` (or ``MLFLOW_EXPERIMENT_ID``), then to MLflow's default store and to
    ``default_experiment`` (the config's name; MLflow's Default experiment when there is none).
    ``parent_run_id`` makes the run a child run (``mlflow.parentRunId``: a study's trials).

    The MLflow run's id is kept in ``RUN_DIR/mlflow.json``, and a resumed Trainer re-opens that run.
    Each epoch reaches MLflow once, with the values of ``metrics.jsonl`` (MLflow keeps every value
    logged at a step, so nothing may be logged twice): an epoch is sent once its checkpoint is
    written, so the epochs a killed run loses are the ones its resumed run redoes and logs; an epoch
    the MLflow run already has is not sent again; and the epochs the run directory has but MLflow
    lacks (the server was away) are sent on resume.
    A server that cannot be reached, at the start or later, is one warning; nothing more is sent
    and training goes on.
    """

    name = "mlflow"

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None, *,
                 parent_run_id: str | None = None, default_experiment: str | None = None):
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        self.experiment, self.default_experiment = experiment, default_experiment
        self.parent_run_id = parent_run_id
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.client: Any = None
        self.run_id: str | None = None
        self.off = False  # could not reach MLflow: warned once, nothing more is sent
        self.logged: set[int] = set()  # the epochs (steps) the MLflow run has
        self.pending: list[tuple[dict[str, float], int]] = []  # epochs waiting for their checkpoint

    @classmethod
    def from_config(cls, mlflow: MlflowConfig | None, default_experiment: str | None = None) -> MlflowTracker:
        """The tracker a config's ``mlflow`` section (or its absence: the environment) describes."""
        return cls(mlflow.tracking_uri if mlflow else None, mlflow.experiment if mlflow else None,
                   default_experiment=default_experiment)

    @property
    def active(self) -> bool:
        return self.run_id is not None and not self.off

    def child(self) -> MlflowTracker:
        """A tracker for a child run of this one (off, without a warning, when this one is off)."""
        child = MlflowTracker(self.tracking_uri, self.experiment, parent_run_id=self.run_id,
                              default_experiment=self.default_experiment)
        child.off = not self.active
        return child

    def describe(self, params: Mapping[str, str], tags: Mapping[str, str]) -> None:
        self.params, self.tags = dict(params), {k: str(v) for k, v in tags.items() if v is not None}

    # ------------------------------------------------------------------ the Trainer's hooks

    def on_train_begin(self, trainer: Trainer) -> None:
        mlflow_module()  # on every process: a missing package fails everywhere alike
        if not trainer.dist.is_main or self.off or self.run_id is not None:
            return
        if not self.params:  # a Trainer used on its own: its training settings
            self.params = flat_params({"train": trainer.config.model_dump(mode="json")})
        record = trainer.run.path / MLFLOW_RECORD if trainer.run is not None else None
        earlier = _recorded_run(record) if record is not None else None
        resumed = bool(getattr(trainer, "resumed", False))
        self.open(earlier if resumed else None, name=trainer.run.path.name if trainer.run is not None else None,
                  replaces=None if resumed else earlier)
        if not self.active:
            return
        if record is not None:
            atomic_write(record, json.dumps({"run_id": self.run_id}, indent=2) + "\n")
        missing = [logs for logs in trainer.history if int(logs["epoch"]) not in self.logged]
        if missing:  # epochs before the checkpoint that MLflow never got
            self._log_batch([(_numbers(logs), int(logs["epoch"])) for logs in missing], "the epochs before the checkpoint")
            self.logged.update(int(logs["epoch"]) for logs in missing)
        trainer.log(f"mlflow: run {self.run_id} in {_shown(self._uri())}")

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        # sent once the epoch's checkpoint is on disk (the next epoch's start, the end of training):
        # a run killed before that redoes the epoch when resumed, and logs it then
        if self.active and epoch not in self.logged:
            self.pending.append((_numbers(logs), epoch))

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        self._flush()

    def on_train_end(self, trainer: Trainer) -> None:
        self._flush()

    def _flush(self) -> None:
        pending, self.pending = self.pending, []
        if pending and self.active:
            self._log_batch(pending, f"epoch {pending[-1][1]}")
            self.logged.update(step for _, step in pending)

    # ------------------------------------------------------------------ a run's start and end

    def open(self, run_id: str | None = None, *, name: str | None = None, replaces: str | None = None) -> str | None:
        """Start an MLflow run with the described params and tags, or re-open ``run_id`` (logging
        the params it lacks); ``replaces``: an earlier attempt's run, marked KILLED if still running.
        Returns the run's id, or None (one warning) when MLflow cannot be reached."""
        if self.off:
            return None
        try:
            mlflow = mlflow_module()
            from mlflow.entities import Param, RunTag

            self._probe()
            client = self.client = mlflow.MlflowClient(self.tracking_uri)
            existing = self._existing(client, run_id)
            params = self.params
            if existing is not None:
                client.update_run(run_id, status="RUNNING")
                self.logged = {int(m.step) for m in client.get_metric_history(run_id, "epoch")}
                kept = existing.data.params
                changed = sorted(k for k, v in params.items() if k in kept and kept[k] != v)
                if changed:
                    warnings.warn(f"MLflow run {run_id} keeps the values it was first given for {', '.join(changed[:5])} "
                                  "(MLflow does not change a logged param); the run's config.yaml has the new ones.",
                                  stacklevel=2)
                params = {k: v for k, v in params.items() if k not in kept}
            else:
                if replaces is not None:
                    old = self._existing(client, replaces)
                    if old is not None and old.info.status == "RUNNING":
                        client.set_terminated(replaces, "KILLED")
                tags = dict(self.tags)
                if self.parent_run_id is not None:
                    tags["mlflow.parentRunId"] = self.parent_run_id
                run_id = client.create_run(self._experiment_id(client), tags=tags, run_name=name).info.run_id
                self.logged = set()
            client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                             tags=[RunTag(k, v) for k, v in self.tags.items()])
            self.run_id = run_id
        except ConfigError:
            raise
        except Exception as exc:
            self._fail(exc, "the run's start")
        return self.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Numbers at one step (a study's own figures)."""
        if self.active and metrics:
            self._log_batch([(_numbers(metrics), step)], "metrics")

    def log_files(self, paths: Sequence[Path], artifact_path: str | None = None) -> None:
        """Files as the run's artifacts (in the folder ``artifact_path`` of them, if given)."""
        if not self.active:
            return
        try:
            for path in paths:
                self.client.log_artifact(self.run_id, str(path), artifact_path)
        except Exception as exc:
            self._fail(exc, "the run's files")

    def end(self, metrics: Mapping[str, float] | None = None, artifacts: Sequence[Path] = (), status: str = "FINISHED",
            *, tags: Mapping[str, Any] | None = None) -> None:
        """The final metrics (at step 0), ``tags``, the ``artifacts``, and the run's status."""
        self._flush()
        if not self.active:
            return
        self.log_metrics(metrics or {})
        self.log_files(artifacts)
        try:
            if tags:
                from mlflow.entities import RunTag

                self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
            if self.active:
                self.client.set_terminated(self.run_id, status)
        except Exception as exc:
            self._fail(exc, "the run's end")

    # ------------------------------------------------------------------ helpers

    def _uri(self) -> str:
        return self.tracking_uri or mlflow_module().get_tracking_uri()

    def _probe(self) -> None:
        """A tracking server must answer at all within PROBE_SECONDS (any HTTP answer will do):
        MLflow's own client retries a refused connection for minutes before it gives up."""
        uri = self._uri()
        if not uri.startswith(("http://", "https://")):
            return
        import requests

        try:
            requests.get(uri, timeout=PROBE_SECONDS, allow_redirects=False)
        except requests.RequestException as exc:
            raise ConnectionError(f"no answer from {_shown(uri)}: {type(exc).__name__}") from None

    @staticmethod
    def _existing(client: Any, run_id: str | None) -> Any:
        if run_id is None:
            return None
        from mlflow.exceptions import MlflowException

        try:
            return client.get_run(run_id)
        except MlflowException:  # deleted, or another tracking store: a new run takes the epochs
            return None

    def _experiment_id(self, client: Any) -> str:
        from mlflow.exceptions import MlflowException

        name = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if name is None and os.environ.get("MLFLOW_EXPERIMENT_ID"):
            return os.environ["MLFLOW_EXPERIMENT_ID"]
        name = name or self.default_experiment or "Default"
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return client.create_experiment(name)
        except MlflowException:  # another process created it a moment ago
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _log_batch(self, steps: Sequence[tuple[dict[str, float], int]], what: str) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for values, step in steps for k, v in values.items()]
        try:
            self.client.log_batch(self.run_id, metrics=metrics)
        except Exception as exc:
            self._fail(exc, what)

    def _fail(self, exc: Exception, what: str) -> None:
        self.off = True
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        warnings.warn(
            f"MLflow at {_shown(self._uri())}: {what} could not be logged ({reason}); training goes on without MLflow, "
            "and the run directory keeps everything (metrics.jsonl, summary.json, the model). Fix: start the tracking "
            "server, or correct mlflow.tracking_uri (or MLFLOW_TRACKING_URI).", stacklevel=3,
        )
