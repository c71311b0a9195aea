"""deepworks tune: the search space checked before any trial, grid search, best.yaml, resuming,
study.html, two objectives, and two workers sharing one PostgreSQL study (one killed mid-trial)."""

from __future__ import annotations

import csv
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("optuna")

from deepworks.cli import main  # noqa: E402
from deepworks.config import load_config  # noqa: E402
from deepworks.tune import PruneOnPlateau, parse_space  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _config(tmp_path: Path, space: dict, **tune) -> Path:
    """A small MLP on the digits: a trial takes about a second."""
    cfg = {
        "name": "tiny",
        "seed": 0,
        "data": {"dataset": "digits"},
        "model": {"name": "mlp", "hidden": [16]},
        "train": {"epochs": 2, "batch_size": 64, "progress": "none", "optimizer": {"name": "adamw", "lr": 0.01}},
        "report": False,
        "tune": {"metric": "val_accuracy", "space": space, **tune},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _rows(study_dir: Path) -> list[dict]:
    with open(study_dir / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_grid_search_runs_every_point_of_the_declared_grid_exactly_once(tmp_path):
    space = {"train.optimizer.lr": {"choice": [0.003, 0.03]}, "model.hidden": {"choice": [[8], [16, 8]]},
             "train.batch_size": {"int": [64, 128], "step": 64}}
    path = _config(tmp_path, space)
    assert parse_space(path).grid_size() == 8
    study = tmp_path / "grid"
    assert main(["tune", str(path), "--sampler", "grid", "--trials", "20", "--study-dir", str(study)]) == 0
    rows = _rows(study)
    seen = [(float(r["train.optimizer.lr"]), yaml.safe_load(r["model.hidden"]), int(r["train.batch_size"])) for r in rows]
    expected = [(lr, h, b) for lr in (0.003, 0.03) for h in ([8], [16, 8]) for b in (64, 128)]
    assert sorted(map(repr, seen)) == sorted(map(repr, expected))  # every point once, nothing else
    assert all(r["state"] == "complete" for r in rows)
    for r in rows:  # each trial is a run directory trained with its own values
        cfg = yaml.safe_load((Path(r["run_dir"]) / "config.yaml").read_text())
        assert cfg["model"]["hidden"] == yaml.safe_load(r["model.hidden"]) and cfg["tune"] is None
        assert cfg["train"]["batch_size"] == int(r["train.batch_size"])
        assert (Path(r["run_dir"]) / "summary.json").exists()


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"model.hiden": {"choice": [[8]]}}, "tune.space.model.hiden: unknown key. Did you mean 'model.hidden'?"),
        ({"model.activation": {"choice": []}}, "tune.space.model.activation: choice needs a non-empty list"),
        ({"model.dropout": {"uniform": [0.5, 0.1]}}, "tune.space.model.dropout: uniform range has low > high (0.5 > 0.1)"),
        ({"model.dropout": {"uniform": [0.0, 1.5]}}, "tune.space.model.dropout: the value 1.5 is refused"),
        ({"model.activation": {"choice": ["relu", "relux"]}}, "tune.space.model.activation: the value relux is refused"),
    ],
)
def test_a_bad_search_space_is_a_one_line_error_before_any_trial(tmp_path, capsys, space, expected):
    path = _config(tmp_path, {"train.optimizer.lr": {"log_uniform": [1e-3, 1e-1]}, **space})
    study = tmp_path / "study"
    assert main(["tune", str(path), "--trials", "2", "--study-dir", str(study)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in " ".join(err.split()) and err.startswith("error:")
    assert len(err.splitlines()) == 1 and "Traceback" not in err  # one line
    assert not study.exists()  # nothing ran


def test_an_unreachable_storage_is_an_error_naming_the_url_without_its_password(tmp_path, capsys):
    path = _config(tmp_path, {"train.optimizer.lr": {"log_uniform": [1e-3, 1e-1]}})
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://tuner:s3cret-pw@127.0.0.1:{port}/studies"
    assert main(["tune", str(path), "--trials", "1", "--storage", url, "--study-dir", str(tmp_path / "s")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--storage postgresql://tuner:***@127.0.0.1:{port}/studies: cannot open" in err
    assert "s3cret-pw" not in err and "Traceback" not in err
    assert not any((tmp_path / "s").glob("trial-*"))


def test_tpe_study_writes_results_resumes_and_best_yaml_retrains_to_the_same_accuracy(tmp_path):
    import deepworks

    space = {"train.optimizer.lr": {"log_uniform": [1e-3, 3e-2]}, "model.activation": {"choice": ["relu", "tanh"]},
             "model.hidden": {"choice": [[16], [32]]}}
    path = _config(tmp_path, space)
    study = tmp_path / "study"
    args = ["tune", str(path), "--sampler", "tpe", "--pruner", "median", "--study-dir", str(study)]
    assert main([*args, "--trials", "3"]) == 0
    assert len(_rows(study)) == 3
    assert main([*args, "--trials", "4"]) == 0  # the same command with more trials resumes the study
    rows = _rows(study)
    assert [int(r["trial"]) for r in rows] == [0, 1, 2, 3]
    assert {Path(r["run_dir"]).name for r in rows} == {"trial-0000", "trial-0001", "trial-0002", "trial-0003"}
    summary = json.loads((study / "study.json").read_text())
    best = summary["best"]
    complete = [float(r["val_accuracy"]) for r in rows if r["state"] == "complete"]
    assert best["values"]["val_accuracy"] == max(complete)
    # four complete trials with different draws: fANOVA gives every key a share, the shares sum to 1
    assert len(complete) == 4
    found = summary["importances"]["val_accuracy"]
    assert set(found) == set(space) and all(v >= 0 for v in found.values())
    assert sum(found.values()) == pytest.approx(1.0)
    record = json.loads((study / f"trial-{best['trial']:04d}" / "trial.json").read_text())
    assert record["params"] == best["params"] and record["state"] == "complete"
    page = (study / "study.html").read_text()
    for ident in ("fig-history", "fig-parallel", "fig-slices", "sec-trials"):
        assert f'id="{ident}"' in page
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained
    # best.yaml is a plain config: deepworks train gives the best trial's validation accuracy again
    again = deepworks.train(study / "best.yaml", run_dir=tmp_path / "retrain")
    assert again.summary["val"]["accuracy"] == pytest.approx(best["values"]["val_accuracy"], abs=1e-9)


def test_two_metrics_with_nsga2_give_a_pareto_front(tmp_path):
    path = _config(tmp_path, {"model.hidden": {"choice": [[4], [16], [64]]}},
                   metric=["val_accuracy", "parameters"])
    study = tmp_path / "study"
    assert main(["tune", str(path), "--sampler", "nsga2", "--trials", "3", "--study-dir", str(study)]) == 0
    summary = json.loads((study / "study.json").read_text())
    assert summary["directions"] == ["maximize", "minimize"] and summary["pruner"] == "none"
    front = summary["pareto"]
    assert front and all(set(p["values"]) == {"val_accuracy", "parameters"} for p in front)
    sizes = {float(r["parameters"]) for r in _rows(study)}
    assert min(sizes) in {p["values"]["parameters"] for p in front}  # the smallest model is never dominated on size
    assert 'id="fig-pareto"' in (study / "study.html").read_text()


def test_the_pruning_callback_reports_each_epoch_and_stops_the_trainer():
    class Trial:
        def __init__(self):
            self.reported = []

        def report(self, value, step):
            self.reported.append((step, value))

        def should_prune(self):
            return len(self.reported) >= 2

    class Trainer:
        stop_training = False

        def log(self, text):
            pass

    trial, trainer = Trial(), Trainer()
    cb = PruneOnPlateau(trial, "val_accuracy")
    cb.on_epoch_end(trainer, 1, {"val_accuracy": 0.5})
    assert not trainer.stop_training
    cb.on_epoch_end(trainer, 2, {"loss": 1.0})  # validation skipped this epoch: nothing to report
    cb.on_epoch_end(trainer, 3, {"val_accuracy": 0.6})
    assert trial.reported == [(1, 0.5), (3, 0.6)] and trainer.stop_training and cb.pruned_at == 3


def test_the_example_config_trains_and_its_space_is_valid():
    example = Path(__file__).resolve().parents[1] / "examples" / "configs" / "digits-tune.yaml"
    cfg = load_config(example)
    assert cfg.tune is not None and cfg.tune.metric == "val_accuracy"
    assert parse_space(example).keys == [
        "train.optimizer.lr", "model.dropout", "model.activation", "train.batch_size", "model.filters"]


# ------------------------------------------------------------------------ PostgreSQL


def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    candidates = ([Path(found).resolve().parent] if found else []) + [
        Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)] + [Path("/usr/local/bin")]
    for d in candidates:
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    return None


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (a free port, trust authentication). As root
    the server runs as the `postgres` user (or `nobody`): PostgreSQL refuses to run as root."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl); .ci/run installs Debian's postgresql")
    base = Path(tempfile.mkdtemp(prefix="deepworks-pg-"))  # not tmp_path: the server's user must reach it
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres").pw_name
        except KeyError:
            user = "nobody"
        shutil.chown(base, user)
        prefix = ["runuser", "-u", user, "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = base / "data"
    try:
        subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "tuner", "--no-sync"],
                       check=True, capture_output=True)
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w", "-o",
                        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -F", "start"], check=True, capture_output=True)
        yield f"postgresql://tuner@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _worker(config: Path, url: str, study_dir: Path, log: Path, trials: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "deepworks", "tune", str(config), "--trials", str(trials), "--storage", url, "--study", "shared",
         "--study-dir", str(study_dir)], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _trials_of(study_dir: Path, pid: int) -> list[Path]:
    found = []
    for record in study_dir.glob("trial-*/trial.json"):
        try:
            if json.loads(record.read_text())["worker"].endswith(f":{pid}"):
                found.append(record.parent)
        except (ValueError, KeyError):  # being written
            continue
    return sorted(found)


def test_two_workers_share_a_postgresql_study_and_a_killed_workers_trial_is_retried(tmp_path, postgres_url):
    import optuna

    cfg = {
        "name": "shared", "seed": 0, "data": {"dataset": "digits"},
        "model": {"name": "cnn", "filters": [8], "hidden": [16]},
        "train": {"epochs": 4, "batch_size": 32, "progress": "none"}, "report": False,
        "tune": {"metric": "val_accuracy", "pruner": "none", "heartbeat": 1, "sampler": "random",
                 "space": {"train.optimizer.lr": {"log_uniform": [1e-3, 1e-2]}}},
    }
    config = tmp_path / "shared.yaml"
    config.write_text(yaml.safe_dump(cfg))
    study_dir = tmp_path / "study"  # both workers write here: trial directories must never collide
    asked = 8  # enough that each worker finishes a trial and b is then killed in another
    a = _worker(config, postgres_url, study_dir, tmp_path / "a.log", asked)
    b = _worker(config, postgres_url, study_dir, tmp_path / "b.log", asked)
    try:
        victim = None
        deadline = time.time() + 120
        while time.time() < deadline and b.poll() is None:  # b finishes one trial, then dies in its second
            mine = _trials_of(study_dir, b.pid)
            done = [d for d in mine if (d / "summary.json").exists()]
            running = [d for d in mine if (d / "metrics.jsonl").exists() and not (d / "summary.json").exists()]
            if done and running:
                victim = running[0]
                os.kill(b.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        assert victim is not None, (tmp_path / "b.log").read_text()[-2000:]
        b.wait(10)
        assert a.wait(180) == 0, (tmp_path / "a.log").read_text()[-3000:]
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
    killed = int(victim.name.split("-")[1])
    study = optuna.load_study(study_name="shared", storage=postgres_url.replace("postgresql://", "postgresql+psycopg2://"))
    trials = study.get_trials()
    states = {t.number: t.state.name for t in trials}
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == asked  # none lost, none extra
    assert states[killed] == "FAIL"
    retry = [t for t in complete if t.system_attrs.get("failed_trial") == killed]
    assert len(retry) == 1 and retry[0].params == study.trials[killed].params  # run again, with its values
    assert json.loads((study_dir / f"trial-{retry[0].number:04d}" / "trial.json").read_text())["retries"] == killed
    workers = {t.user_attrs["worker"] for t in complete}
    assert any(w.endswith(f":{b.pid}") for w in workers) and any(w.endswith(f":{a.pid}") for w in workers)  # shared
    dirs = [t.user_attrs["run_dir"] for t in trials if "run_dir" in t.user_attrs]
    assert len(dirs) == len(set(dirs))  # no two trials share a directory
    for t in complete:
        assert (Path(t.user_attrs["run_dir"]) / "summary.json").exists()
    assert sum(r["state"] == "complete" for r in _rows(study_dir)) == asked


def test_cv_scores_each_trial_by_the_mean_over_folds(tmp_path):
    path = _config(tmp_path, {"train.optimizer.lr": {"choice": [0.003, 0.03]}})
    study = tmp_path / "study"
    assert main(["tune", str(path), "--sampler", "grid", "--cv", "2", "--study-dir", str(study)]) == 0
    best = json.loads((study / "study.json").read_text())["best"]["trial"]
    for r in _rows(study):
        cv = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert cv["folds"] == 2 and (Path(r["run_dir"]) / "fold-2" / "summary.json").exists()
        assert float(r["val_accuracy"]) == pytest.approx(cv["mean"]["accuracy"])
        # the final model (all non-test data, scored on the test split) is trained for the best trial alone
        final = Path(r["run_dir"]) / "final" / "summary.json"
        assert final.exists() == (int(r["trial"]) == best) == ("test" in cv)
        if final.exists():
            assert cv["test"] == json.loads(final.read_text())["test"]


def test_no_trial_reads_the_test_split_and_the_best_trial_is_completed_once(tmp_path, monkeypatch):
    """A trial is scored on validation and writes no checkpoint, test figures, predictions or
    report; once the study ends, the best trial's kept model is evaluated on the test split, once,
    and its figures are those of a plain forward pass of its weights scored by scikit-learn."""
    from sklearn.metrics import accuracy_score

    from deepworks.models.external import run_config
    from deepworks.pipeline import load_run, prepare_data
    from deepworks.training import Trainer
    from deepworks.tune import tune

    seen = []
    evaluate = Trainer.evaluate

    def spy(self, data, keep=None):
        seen.append((keep, len(data)))
        return evaluate(self, data, keep=keep)

    monkeypatch.setattr(Trainer, "evaluate", spy)
    path = _config(tmp_path, {"train.optimizer.lr": {"choice": [0.0003, 0.03]}})
    raw = yaml.safe_load(path.read_text())
    raw["report"] = True
    path.write_text(yaml.safe_dump(raw))
    summary = tune(path, sampler="grid", study_dir=tmp_path / "study")
    best = tmp_path / "study" / f"trial-{summary['best']['trial']:04d}"
    data = prepare_data(run_config(best))
    assert [k for k, _ in seen].count("test") == 1 and ("test", len(data.test)) in seen
    trials = sorted((tmp_path / "study").glob("trial-*"))
    assert len(trials) == 2
    for run in trials:
        record = json.loads((run / "summary.json").read_text())
        assert not (run / "checkpoints" / "last.safetensors").exists() and not (run / "finishing").exists()
        if run == best:
            assert {"test_report.json", "predictions.safetensors", "report.html"} <= {p.name for p in run.iterdir()}
            assert record["train"] is not None and "diagnosis" in record
        else:
            assert "test" not in record and record["train"] is None
            assert not {"test_report.json", "predictions.safetensors", "report.html"} & {p.name for p in run.iterdir()}
    model = load_run(best).model.eval()
    info = json.loads((best / "data.json").read_text())  # stored pixels, normalised by hand
    mean, std = (torch.tensor(info[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        predicted = model((data.test.x.float() * info["pixels"]["scale"] - mean) / std).argmax(1)
    want = accuracy_score(data.test.y.numpy(), predicted.numpy())
    assert json.loads((best / "summary.json").read_text())["test"]["accuracy"] == pytest.approx(want, abs=1e-12)


def test_values_that_do_not_fit_together_fail_their_trial_and_the_study_goes_on(tmp_path):
    # four 2x2 max-pools do not fit an 8x8 digit: each value is valid alone, the combination is not
    path = _config(tmp_path, {"model.filters": {"choice": [[4], [4, 4, 4, 4]]}})
    raw = yaml.safe_load(path.read_text())
    raw["model"] = {"name": "cnn", "hidden": [8]}
    path.write_text(yaml.safe_dump(raw))
    study = tmp_path / "study"
    assert main(["tune", str(path), "--sampler", "grid", "--study-dir", str(study)]) == 0
    states = {r["model.filters"]: r["state"] for r in _rows(study)}
    assert states == {"[4]": "complete", "[4, 4, 4, 4]": "invalid"}
    assert json.loads((study / "study.json").read_text())["best"]["params"] == {"model.filters": [4]}


def test_a_subprocess_study_with_cmaes_hyperband_and_a_timeout_in_the_default_sqlite_file(tmp_path):
    """`deepworks tune` as a user runs it: a process of its own, no --storage (the study lives in
    STUDY_DIR/study.db), --sampler cmaes, --pruner hyperband, and --timeout cutting a 50-trial
    study short; then the same command without --timeout continues it from the file."""
    import optuna

    path = _config(tmp_path, {"train.optimizer.lr": {"log_uniform": [1e-3, 3e-2]},
                              "model.dropout": {"uniform": [0.0, 0.3]}})
    study = tmp_path / "study"
    args = [sys.executable, "-m", "deepworks", "tune", str(path), "--sampler", "cmaes", "--pruner", "hyperband",
            "--study-dir", str(study)]
    timeout = 4
    first = subprocess.run([*args, "--trials", "50", "--timeout", str(timeout)], capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    rows = _rows(study)
    done = len(rows)
    assert 1 <= done < 50
    assert f"--timeout {timeout} s reached: {done} of 50 trials finished" in first.stdout
    summary = json.loads((study / "study.json").read_text())
    assert (summary["sampler"], summary["pruner"], summary["trials"]) == ("cmaes", "hyperband", 50)
    assert summary["storage"] == f"sqlite:///{(study / 'study.db').resolve()}"
    assert sum(summary["states"].values()) == done and set(summary["states"]) <= {"complete", "pruned"}
    # the study in the SQLite file, read with Optuna itself: the trials of trials.csv, and none
    # started after the timeout. The clock starts before the first trial does, so no trial may
    # start later than `timeout` after the first (0.25 s for creating the trial after the check)
    stored = optuna.load_study(study_name=summary["study"], storage=summary["storage"]).get_trials()
    assert sorted(t.number for t in stored) == sorted(int(r["trial"]) for r in rows)
    first_start = min(t.datetime_start for t in stored)
    assert all((t.datetime_start - first_start).total_seconds() < timeout + 0.25 for t in stored)
    # the numeric keys were drawn inside their ranges (CMA-ES, after its random start)
    for r in rows:
        assert 1e-3 <= float(r["train.optimizer.lr"]) <= 3e-2 and 0.0 <= float(r["model.dropout"]) <= 0.3

    again = subprocess.run([*args, "--trials", str(done + 1)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [int(r["trial"]) for r in _rows(study)] == list(range(done + 1))  # continued, not restarted
    # and CMA-ES, not another sampler under its name, drew the last trial (after one random start
    # in a study of done + 1 trials): it leaves its generation on the trials it samples
    last = optuna.load_study(study_name=summary["study"], storage=summary["storage"]).get_trials()[-1]
    assert "cma:generation" in last.system_attrs
