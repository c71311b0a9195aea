"""A study: Optuna's samplers and pruners over :func:`deepworks.pipeline.train`.

Each trial is a normal run directory ``<study-dir>/trial-<number>`` (Optuna's trial number,
unique within the study in its storage), trained with the config's own seed and the trial's
values as overrides. The storage is SQLite in the study directory by default, or any URL
(``postgresql://...``): every worker that runs the same command joins the same study. Workers
send a heartbeat; a trial whose worker stopped beating for three heartbeats is marked failed
and run again (Optuna's ``RetryFailedTrialCallback``), and its new directory records which
trial it retries. ``trials`` is the number of finished trials the study ends with, however many
workers share it, so running the command again resumes a study where it stopped.

With ``train.track: mlflow`` the study is one MLflow run (its id kept in the study's storage, so
every worker and a resumed study log to the same one) and each trial a child run of it (params and
metrics only); at the end the study's run gets the best trial's figures and files and the study's own.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepworks.config import Config, load_config, parse_overrides
from deepworks.errors import ConfigError, DeepworksError, TrainingError
from deepworks.runs import OUTPUTS
from deepworks.training.callbacks import Callback
from deepworks.training.tasks import metric_mode
from deepworks.training.tracking import MlflowTracker, check_trackers, final_metrics, flat_params
from deepworks.tune.space import SearchSpace, parse_space

__all__ = ["tune", "open_study", "redact", "SAMPLERS", "PRUNERS", "PruneOnPlateau", "objective_names"]

SAMPLERS = ("grid", "random", "tpe", "cmaes", "nsga2")
PRUNERS = ("none", "median", "hyperband")
DEFAULT_TRIALS = 20
PARAMETERS = "parameters"  # the model's parameter count, as a metric (minimised by default)


def _optuna():
    try:
        import optuna
    except ImportError:
        raise DeepworksError(
            "deepworks tune needs Optuna. Fix: pip install 'deepworks[tune]' (optuna, and psycopg2-binary for PostgreSQL)."
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # deepworks prints one line per trial itself
    return optuna


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and study.json)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy can read: drop anything between ':' and '@' after the scheme
        import re

        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def open_study(storage_url: str, name: str, directions: list[str], sampler: Any, heartbeat: int, retries: int) -> Any:
    """Create or load the study ``name`` in ``storage_url`` with heartbeats and retries of dead workers' trials."""
    optuna = _optuna()
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    shown = redact(storage_url)
    storage_url = _driver(storage_url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if storage_url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}  # several local workers wait for the file's lock
    elif storage_url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        for attempt in range(6):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # heartbeat and the retry callback are flagged experimental
                    storage = RDBStorage(
                        storage_url, engine_kwargs=kwargs, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                        failed_trial_callback=RetryFailedTrialCallback(max_retry=retries),
                    )
                break
            except Exception as exc:
                # workers starting together on a new database race to create Optuna's tables: the
                # loser finds them half made ("already exists") and, a moment later, complete
                if attempt == 5 or "already exists" not in str(exc):
                    raise
                time.sleep(0.5 + random.random())
    except ImportError as exc:
        raise DeepworksError(
            f"--storage {shown}: the database driver is missing ({exc}). Fix: pip install 'deepworks[tune]' "
            "(psycopg2-binary for postgresql://)."
        ) from None
    except Exception as exc:  # sqlalchemy's errors: bad URL, refused connection, wrong password, no database
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        password = _password(storage_url)
        if password:
            reason = reason.replace(password, "***")
        if "parse" in reason and "URL" in reason:
            raise DeepworksError(
                f"--storage {shown}: not a database URL ({reason[:200]}). Fix: e.g. "
                "postgresql://user:password@host:5432/database or sqlite:///path/study.db."
            ) from None
        raise DeepworksError(
            f"--storage {shown}: cannot open the study's storage ({reason[:300]}). Fix: check that the database "
            "server runs and accepts this host, and the URL's user, password and database name."
        ) from None
    try:
        study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, load_if_exists=True,
                                    directions=directions)
    except ValueError as exc:  # an existing study of this name optimises other directions
        raise ConfigError(f"--study {name}: {exc}. Fix: choose another --study name.") from None
    if [d.name.lower() for d in study.directions] != directions:
        raise ConfigError(
            f"--study {name}: the study in {shown} optimises {[d.name.lower() for d in study.directions]}, this config "
            f"{directions}. Fix: choose another --study name, or the metric and direction it was created with."
        )
    return study


def _driver(url: str) -> str:
    """``postgresql://`` through psycopg2 when psycopg (3), SQLAlchemy 2.1's default driver, is not installed."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def _password(url: str) -> str | None:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).password
    except Exception:
        return None


def objective_names(cfg: Config) -> tuple[list[str], list[str]]:
    """The metrics a trial scores and their directions (``maximize``/``minimize``)."""
    t = cfg.tune
    metric = t.metric if t is not None and t.metric is not None else cfg.train.monitor
    metrics = [metric] if isinstance(metric, str) else list(metric)
    if not 1 <= len(metrics) <= 2 or len(set(metrics)) != len(metrics):
        raise ConfigError(f"tune.metric: expected one metric, or two different ones for NSGA-II (given: {metric!r}).")
    for m in metrics:
        if m != PARAMETERS and not m.startswith(("val_", "train_")):
            raise ConfigError(
                f"tune.metric: {m!r} is not a per-split metric. Fix: e.g. val_accuracy, val_loss, val_mae, or "
                f"{PARAMETERS} (the model's size)."
            )
    direction = t.direction if t is not None else None
    if direction is None:
        directions = ["minimize" if m == PARAMETERS or metric_mode(m) == "min" else "maximize" for m in metrics]
    else:
        directions = [direction] if isinstance(direction, str) else list(direction)
        if len(directions) == 1 and len(metrics) == 2:
            raise ConfigError("tune.direction: two metrics need two directions, e.g. [maximize, minimize].")
        if len(directions) != len(metrics):
            raise ConfigError(f"tune.direction: {len(directions)} directions for {len(metrics)} metric(s). Fix: one per metric.")
    return metrics, directions


class PruneOnPlateau(Callback):
    """Reports the monitored metric to the Optuna trial after each epoch; stops the run when
    the pruner says so (the run then ends as usual, and the trial is marked pruned)."""

    def __init__(self, trial: Any, metric: str):
        self.trial, self.metric = trial, metric
        self.pruned_at: int | None = None

    def on_epoch_end(self, trainer: Any, epoch: int, logs: dict[str, Any]) -> None:
        value = logs.get(self.metric)
        if value is None:  # train.val_every skipped this epoch's validation
            return
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            trainer.stop_training = True
            trainer.log(f"pruned: {self.metric} {value:.4f} at epoch {epoch} is behind the study's other trials")


class _Unusable(Exception):
    """A trial's values, each valid alone, do not work together: the trial fails, the study goes on."""


class _Surplus(Exception):
    """Another worker started the study's last trial first: this one is not needed."""


def _sampler(name: str, space: SearchSpace, seed: int, trials: int, objectives: int) -> Any:
    optuna = _optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "grid":
            return optuna.samplers.GridSampler(space.grid(), seed=seed)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "tpe":
            # a third of a short study (up to 10 trials) is drawn at random before TPE models the rest
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, min(10, trials // 3)))
        if name == "cmaes":
            try:
                import cmaes  # noqa: F401
            except ImportError:
                raise DeepworksError("--sampler cmaes needs the cmaes package. Fix: pip install 'deepworks[tune]'.") from None
            # CMA-ES models the numeric keys; choices are drawn at random beside it
            return optuna.samplers.CmaEsSampler(
                seed=seed, n_startup_trials=max(1, min(5, trials // 4)), warn_independent_sampling=False,
                independent_sampler=optuna.samplers.RandomSampler(seed=seed),
            )
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 3)))
    raise ConfigError(f"--sampler {name}: unknown sampler. Known samplers: {', '.join(SAMPLERS)}.")


def _pruner(name: str, trials: int, warmup: int, epochs: int) -> Any:
    optuna = _optuna()
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        # prune below the median of the trials before it, once a few have finished and after warm-up
        return optuna.pruners.MedianPruner(n_startup_trials=max(2, min(5, trials // 4)), n_warmup_steps=warmup + 1)  # epochs 1..warmup never
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=warmup + 1, max_resource=max(epochs, warmup + 2))
    raise ConfigError(f"--pruner {name}: unknown pruner. Known pruners: {', '.join(PRUNERS)}.")


def _counts(trial: Any) -> bool:
    """Does a trial count towards the study's number: finished, running, queued, or failed for
    a reason that running it again would not change (a divergence)?"""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING):
        return True
    return trial.state == TrialState.FAIL and _settled(trial)


def _settled(trial: Any) -> bool:
    """A failure that running the trial again would repeat: it diverged, or its values do not fit together."""
    return bool(trial.user_attrs.get("diverged") or trial.user_attrs.get("invalid"))


def _finished(trial: Any) -> bool:
    from optuna.trial import TrialState

    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and _settled(trial))


def tune(
    config: str | Path | Mapping[str, Any],
    *,
    trials: int | None = None,
    sampler: str | None = None,
    pruner: str | None = None,
    storage: str | None = None,
    study: str | None = None,
    study_dir: str | Path | None = None,
    timeout: float | None = None,
    cv: int | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    studies_root: str | Path = OUTPUTS / "studies",
) -> dict[str, Any]:
    """Run (or join, or resume) a hyperparameter study on ``config``'s ``tune`` section.

    Returns the study's summary (also ``study.json``; a dict that a notebook shows as a card:
    :class:`~deepworks.tune.results.StudyResult`); writes ``trials.csv``, ``best.yaml`` and
    ``study.html`` into the study directory.
    """
    optuna = _optuna()
    from optuna.storages import RetryFailedTrialCallback

    pairs = parse_overrides(list(overrides)) if not isinstance(overrides, Mapping) else list(overrides.items())
    base = dict(pairs)
    cfg = load_config(config, base)
    space = parse_space(config, base)  # every key and value checked before the first trial
    t = cfg.tune
    metrics, directions = objective_names(cfg)
    sampler = sampler or t.sampler or ("nsga2" if len(metrics) == 2 else "tpe")
    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {sampler}: unknown sampler. Known samplers: {', '.join(SAMPLERS)}.")
    default_pruner = "none" if len(metrics) == 2 or cv else "median"
    pruner = pruner or t.pruner or default_pruner
    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner {pruner}: unknown pruner. Known pruners: {', '.join(PRUNERS)}.")
    if len(metrics) == 2 and sampler not in ("nsga2", "random", "grid", "tpe"):
        raise ConfigError(f"--sampler {sampler}: two metrics need nsga2 (or tpe, random, grid); CMA-ES optimises one.")
    if pruner != "none" and len(metrics) == 2:
        raise ConfigError(f"--pruner {pruner}: Optuna prunes single-metric studies only. Fix: --pruner none.")
    if pruner != "none" and cv:
        raise ConfigError(f"--pruner {pruner} with --cv: a cross-validated trial has no single per-epoch curve to "
                          "prune on. Fix: --pruner none.")
    if pruner != "none" and metrics[0] == PARAMETERS:
        raise ConfigError(f"--pruner {pruner}: {PARAMETERS} is known before training, not per epoch. Fix: --pruner none.")
    if cv is not None and (isinstance(cv, bool) or int(cv) < 2):
        raise ConfigError(f"--cv: expected a number of folds of at least 2, got {cv!r}. Fix: e.g. --cv 5.")
    if trials is None:
        trials = t.trials
    if sampler == "grid":
        size = space.grid_size()
        if trials is None or trials > size:
            if trials is not None:
                print(f"the grid has {size} points: the study runs {size} trials, not {trials}", flush=True)
            trials = size
    trials = int(trials or DEFAULT_TRIALS)
    if trials < 1:
        raise ConfigError(f"--trials: expected at least 1 trial (given: {trials}).")

    name = study or cfg.name
    root = Path(study_dir) if study_dir is not None else Path(studies_root) / name
    root.mkdir(parents=True, exist_ok=True)
    storage_url = storage or f"sqlite:///{(root / 'study.db').resolve()}"
    seed = cfg.seed
    probe = open_study(storage_url, name, directions, None, t.heartbeat, t.retries)
    started = len(probe.get_trials(deepcopy=False))
    # a fresh study on one worker is reproducible (the config's seed); a worker that joins or
    # resumes draws from another seed, so workers do not propose the same values
    if started or storage is not None:
        seed = (seed + started * 7919 + os.getpid() + zlib.crc32(socket.gethostname().encode())) % 2**32
    the_sampler = _sampler(sampler, space, seed, trials, len(metrics))
    the_pruner = _pruner(pruner, trials, t.warmup_epochs, cfg.train.epochs)
    study_ = open_study(storage_url, name, directions, the_sampler, t.heartbeat, t.retries)
    study_.pruner = the_pruner
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental in Optuna
        study_.set_metric_names(metrics)
    _record_study(study_, config, base, space, metrics, directions)
    print(f"study {name}: {trials} trials, sampler {sampler}, pruner {pruner}, storage {redact(storage_url)}, "
          f"directory {root}", flush=True)
    tracker = _study_tracker(cfg, study_, name, {"sampler": sampler, "pruner": pruner, "trials": trials,
                                                 "metric": metrics, "direction": directions})

    def objective(trial: Any) -> Any:
        others = [x for x in study_.get_trials(deepcopy=False) if x.number < trial.number and _counts(x)]
        if len(others) >= trials:
            trial.set_user_attr("surplus", True)
            raise _Surplus()
        params = space.suggest(trial)
        if sampler == "grid" and any(x.params == trial.params for x in others):
            # two workers drew the same grid point at the same moment: the earlier trial has it
            trial.set_user_attr("surplus", True)
            raise _Surplus()
        run_dir = root / f"trial-{trial.number:04d}"
        try:
            run_dir.mkdir(parents=True, exist_ok=False)  # one trial, one directory, whichever worker runs it
        except FileExistsError:
            raise DeepworksError(
                f"{run_dir}: a trial directory of that number already exists, but the study in "
                f"{redact(storage_url)} has no record of it. Fix: use a new --study-dir for this study, or remove the "
                "old directory."
            ) from None
        frozen = next(x for x in study_.get_trials(deepcopy=False) if x.number == trial.number)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental in Optuna
            retried = RetryFailedTrialCallback.retried_trial_number(frozen)
            history = RetryFailedTrialCallback.retry_history(frozen)
        record = {"study": name, "trial": trial.number, "params": params, "worker": _worker(),
                  "retries": retried, "retry_history": history}
        (run_dir / "trial.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", _worker())
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        again = f" (retries trial {retried})" if retried is not None else ""
        print(f"trial {trial.number}{again}: {shown}", flush=True)
        child = tracker.child() if tracker is not None else None
        try:
            values, pruned_at, epochs, resolved = _run_trial(config, {**base, **params, "tune": None}, run_dir, trial,
                                                             metrics, pruner != "none", cv, child)
        except BaseException:
            if child is not None:
                child.end(status="FAILED", tags={"trial": trial.number, "state": "failed"})
            raise
        if child is not None:
            _end_trial_run(child, run_dir, resolved, trial.number, dict(zip(metrics, values, strict=True)), pruned_at)
        trial.set_user_attr("config", resolved)
        trial.set_user_attr("metrics", dict(zip(metrics, values, strict=True)))
        trial.set_user_attr("epochs", epochs)
        record.update(state="pruned" if pruned_at else "complete", pruned_at_epoch=pruned_at,
                      values=dict(zip(metrics, values, strict=True)))
        (run_dir / "trial.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        scored = ", ".join(f"{k} {_shown(v)}" for k, v in zip(metrics, values, strict=True))
        print(f"trial {trial.number}: {'pruned at epoch ' + str(pruned_at) if pruned_at else 'complete'}, {scored}",
              flush=True)
        if pruned_at:
            raise optuna.TrialPruned(f"at epoch {pruned_at}")
        return values[0] if len(values) == 1 else values

    deadline = time.time() + timeout if timeout else None
    begun = time.time()
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental in Optuna
            optuna.storages.fail_stale_trials(study_)  # a dead worker's trial: failed, then queued again
        all_trials = study_.get_trials(deepcopy=False)
        done = sum(_finished(x) for x in all_trials)
        if done >= trials:
            break
        if deadline is not None and time.time() >= deadline:
            print(f"--timeout {timeout:g} s reached: {done} of {trials} trials finished; run the command again to "
                  "continue the study", flush=True)
            break
        waiting = sum(x.state.name == "WAITING" for x in all_trials)
        running = sum(x.state.name == "RUNNING" for x in all_trials)
        if done + running >= trials and not waiting:  # other workers hold the last trials: wait for them
            time.sleep(min(t.heartbeat, 5))
            continue
        study_.optimize(objective, n_trials=1, catch=(_Surplus, _Unusable, TrainingError), gc_after_trial=False)
    if len(metrics) == 1:
        _finish_best(study_)
    from deepworks.tune.results import write_results

    summary = write_results(study_, root, space, metrics, directions, storage_url=redact(storage_url), sampler=sampler,
                            pruner=pruner, trials=trials, seconds=time.time() - begun)
    if tracker is not None:
        _end_study_run(tracker, study_, root, metrics)
    return summary


def _study_tracker(cfg: Config, study: Any, name: str, settings: dict[str, Any]) -> MlflowTracker | None:
    """With train.track: mlflow, the study's MLflow run, opened or re-opened (its id is a user
    attribute of the Optuna study, which every worker shares); None without tracking."""
    if "mlflow" not in cfg.train.track:
        return None
    from deepworks.models.gan import is_adversarial
    from deepworks.version import __version__

    if is_adversarial(cfg.model.name):
        raise ConfigError(f"train.track: mlflow: a GAN ({cfg.model.name}) logs to its run directory only. Fix: remove "
                          "train.track (the study's trials are in its directory and study.html).")
    check_trackers(cfg.train)
    tracker = MlflowTracker.from_config(cfg.mlflow, default_experiment=cfg.name)
    space = study.user_attrs.get("space") or {}
    tracker.describe(flat_params({"study": settings, "space": {k: json.dumps(v) for k, v in space.items()}}),
                     {"study": name, "task": "tune", "model": cfg.model.name, "deepworks_version": __version__})
    if tracker.open(study.user_attrs.get("mlflow_run_id"), name=f"study-{name}") is not None:
        study.set_user_attr("mlflow_run_id", tracker.run_id)
    return tracker


def _end_trial_run(child: MlflowTracker, run_dir: Path, resolved: str, number: int, values: dict[str, float],
                   pruned_at: int | None) -> None:
    """A trial's child run ends with its scores as ``final_<metric>`` (its kept model's figures; the
    per-epoch keys keep one value per epoch); a cross-validated trial's run opens here (its folds log
    nothing)."""
    import yaml

    if child.run_id is None:
        child.describe(flat_params(yaml.safe_load(resolved)), {"run_dir": str(run_dir.resolve())})
        child.open(name=run_dir.name)
    summary = run_dir / "summary.json"
    final = final_metrics(json.loads(summary.read_text())) if summary.is_file() else {}
    final.update({f"final_{k}": v for k, v in values.items()})
    child.end(final, tags={"trial": number, "state": "pruned" if pruned_at else "complete"})


def _end_study_run(tracker: MlflowTracker, study: Any, root: Path, metrics: list[str]) -> None:
    """The study's run at its end: the best trial's scores (``best_<metric>``), test figures and files
    (report, summary, model, config under ``best_trial/``), and the study's own files."""
    complete = [x for x in study.get_trials(deepcopy=False) if x.state.name == "COMPLETE"]
    if len(metrics) == 1 and complete:
        best = study.best_trial
        run_dir = Path(best.user_attrs["run_dir"])
        summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
        tracker.log_metrics({f"best_{metrics[0]}": best.value,
                             **{k: v for k, v in final_metrics(summary).items() if k.startswith("test_")}})
        files = [run_dir / f for f in ("report.html", "summary.json", "model.safetensors", "config.yaml")]
        tracker.log_files([f for f in files if f.is_file()], artifact_path="best_trial")
        tags = {"best_trial": best.number}
    else:
        tags = {}
    files = [root / f for f in ("study.html", "study.json", "trials.csv", "best.yaml")]
    tracker.end(artifacts=[f for f in files if f.is_file()], tags=tags)


def _run_trial(config: Any, overrides: dict[str, Any], run_dir: Path, trial: Any, metrics: list[str], prune: bool,
               cv: int | None, child: MlflowTracker | None = None) -> tuple[list[float], int | None, int | None, str]:
    """Train one trial in ``run_dir``: its metrics, the epoch it was pruned at, the epochs it ran
    (per fold with cv: None) and its resolved config. ``child``: the trial's MLflow run."""
    import deepworks.front as front
    import deepworks.pipeline as pipeline

    callback = PruneOnPlateau(trial, metrics[0]) if prune else None
    callbacks = [c for c in (callback, child) if c is not None]
    try:
        if cv:  # no final model per trial: the best trial's is trained once the study ends
            if child is not None:  # the folds log nothing to MLflow: the trial's child run gets their means
                track = load_config(config, overrides).train.track
                overrides = {**overrides, "train.track": [t for t in track if t != "mlflow"]}
            summary = pipeline.cross_validate(config, folds=int(cv), run_dir=run_dir, overrides=overrides, final=False)
            model = pipeline.load_run(run_dir / "fold-1").model if PARAMETERS in metrics else None
            scores = {f"val_{k}": v for k, v in summary["mean"].items()}
            scores.update({f"train_{k}": v for k, v in (summary.get("train") or {}).items()})
        else:
            run = front.train_trial(config, run_dir=run_dir, overrides=overrides, callbacks=callbacks)
            model, summary = run.model, run.summary
            scores = {f"{split}_{k}": v for split in ("train", "val") for k, v in (summary.get(split) or {}).items()}
    except TrainingError as exc:
        trial.set_user_attr("diverged", str(exc).splitlines()[0][:300])
        print(f"trial {trial.number}: diverged: {str(exc).splitlines()[0]}", flush=True)
        raise
    except ConfigError as exc:  # each value passed on its own, but not this combination (e.g. shapes)
        trial.set_user_attr("invalid", " ".join(str(exc).split())[:500])
        print(f"trial {trial.number}: invalid combination: {' '.join(str(exc).split())}", flush=True)
        raise _Unusable() from None
    if model is not None:
        scores[PARAMETERS] = int(sum(p.numel() for p in model.parameters()))
    values = []
    for m in metrics:
        if scores.get(m) is None:
            known = ", ".join(sorted(k for k, v in scores.items() if isinstance(v, (int, float))))
            raise ConfigError(f"tune.metric: this run has no {m!r}. Fix: one of {known}.")
        values.append(float(scores[m]))
    resolved = (run_dir / "config.yaml").read_text()
    return values, (callback.pruned_at if callback else None), summary.get("epochs_run"), resolved


def _finish_best(study: Any) -> None:
    """The best trial's run completed as a whole run (its test split evaluated, once; the
    baselines, diagnosis and report), by the one worker that claims it first."""
    import deepworks.pipeline as pipeline

    complete = [x for x in study.get_trials(deepcopy=False) if x.state.name == "COMPLETE"]
    if not complete:
        return
    run_dir = Path(study.best_trial.user_attrs["run_dir"])
    marker = run_dir / "finishing"
    try:
        marker.open("x").close()  # another worker is finishing it
    except FileExistsError:
        return
    try:
        print(f"best trial {study.best_trial.number}: its model on the test split, once ({run_dir})", flush=True)
        pipeline.finish(run_dir)  # nothing to do when it is complete already (a study resumed)
    finally:
        marker.unlink(missing_ok=True)


def _shown(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() and abs(value) >= 1 else f"{value:.4g}"


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _record_study(study: Any, config: Any, base: dict[str, Any], space: SearchSpace, metrics: list[str],
                  directions: list[str]) -> None:
    if "space" not in study.user_attrs:
        study.set_user_attr("space", {d.key: {d.kind: list(d.choices) if d.kind == "choice" else [d.low, d.high],
                                              **({"step": d.step} if d.step is not None else {})}
                                      for d in space.dimensions})
        study.set_user_attr("config", str(config) if isinstance(config, (str, Path)) else "mapping")
        study.set_user_attr("overrides", {k: v for k, v in base.items()})
