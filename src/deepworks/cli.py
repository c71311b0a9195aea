"""The ``deepworks`` command line: each subcommand calls one public function.

User errors print one paragraph (no traceback) and exit 2; internal errors exit 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape  # messages quote keys like [height, width]: text, not markup
from rich.table import Table

from deepworks.errors import DeepworksError

app = typer.Typer(
    name="deepworks",
    help="A deep-learning workbench: train, evaluate and use models, from a YAML config or straight from data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # --install-completion and --show-completion (typer's) stay on
)
out = Console()
err = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from deepworks.version import __version__

        out.print(f"deepworks {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    pass


@app.command()
def train(
    config: Annotated[
        Optional[Path], typer.Argument(help="the run's YAML config, or the data itself: a folder with one subfolder of "
                                            "images per class, or a table file (.csv, .parquet, ...)")
    ] = None,
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="override a key: --set train.epochs=5 (repeatable)")
    ] = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="where the run goes (default runs/<name>-<time>)")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="continue the interrupted run in this directory")] = None,
    nproc: Annotated[
        int, typer.Option("--nproc", min=1, help="processes to train with on this node (DDP via torchrun; one per GPU)")
    ] = 1,
    nnodes: Annotated[
        int, typer.Option("--nnodes", help="machines to train on together, each running --nproc processes and this "
                          "same command with its own --node-rank")
    ] = 1,
    node_rank: Annotated[
        int, typer.Option("--node-rank", help="this machine's place among --nnodes, 0 to nnodes-1; node 0 hosts the "
                          "rendezvous and writes the run directory")
    ] = 0,
    master_addr: Annotated[
        Optional[str], typer.Option("--master-addr", help="HOST[:PORT] of node 0, reachable from every node (port "
                                    "default 29500); needed with --nnodes > 1")
    ] = None,
    dist_timeout: Annotated[
        Optional[str], typer.Option("--dist-timeout", help="seconds a process waits for the others at a collective "
                                    "before failing (default 300, or $DEEPWORKS_DIST_TIMEOUT)")
    ] = None,
    cv: Annotated[
        Optional[int], typer.Option("--cv", help="k-fold cross-validation over the non-test data (k >= 2)")
    ] = None,
    target: Annotated[
        Optional[str], typer.Option("--target", help="training from a table: the column to predict (default: the "
                                    "column named label, target, class or y)")
    ] = None,
    text: Annotated[
        Optional[str], typer.Option("--text", help="training from a table: the column of texts to classify (default: "
                                    "the one text-like column, if any)")
    ] = None,
    time: Annotated[
        Optional[str], typer.Option("--time", help="training from a table: the time column; forecasts --target")
    ] = None,
    task: Annotated[
        Optional[str], typer.Option("--task", help="training from a table: classification or regression, where the "
                                    "target could be either")
    ] = None,
) -> None:
    """Train a model from CONFIG, or straight from data (a folder of class subfolders, or a table
    file with --target, --text or --time where they cannot be inferred), or continue a run with
    --resume RUN_DIR. Trained from data, the config is inferred, printed, and saved as the run's
    config.yaml: `deepworks train RUN_DIR/config.yaml` repeats the run."""
    from deepworks.runtime import shutdown_distributed

    master = _check_nodes(nnodes, node_rank, master_addr, dist_timeout)
    config = _config_source(config, resume, target=target, text=text, time=time, task=task)
    if isinstance(config, dict):
        _print_inferred(config, set_)
    if cv is not None or _config_asks_for_cv(config, set_, resume):
        if resume is not None or nproc > 1 or nnodes > 1:
            raise DeepworksError("train --cv: cross-validation runs in one process and cannot be resumed.")
        _cross_validate(config, set_, run_dir, cv)
        return

    if (nproc > 1 or nnodes > 1) and "WORLD_SIZE" not in os.environ:
        _check_before_launch(config, set_, resume)  # report user errors once, not once per process
        raise typer.Exit(_torchrun(nproc, nnodes, node_rank, master))
    where = resume or run_dir
    again = f"deepworks train --resume {where or 'RUN_DIR'}"
    printed = "" if where else " (the run directory printed above)"
    lost = None
    try:
        _train(config, set_, run_dir, resume)
    except KeyboardInterrupt:  # handled here: typer would turn it into a bare exit 130
        err.print(f"interrupted: resume with `{escape(again)}`{printed}", soft_wrap=True)
        raise typer.Exit(130) from None
    except Exception as exc:
        lost = _lost_peer(exc, again, printed)
        if lost is None:
            raise
        raise lost from None
    finally:
        if lost is None:  # after a lost peer the group cannot meet again: no goodbye barrier
            shutdown_distributed()


def _check_nodes(nnodes: int, node_rank: int, master_addr: str | None,
                 dist_timeout: str | None) -> tuple[str, int] | None:
    """Refuse a bad --nnodes/--node-rank/--master-addr/--dist-timeout (one line, exit 2);
    (host, port) of node 0 when one is given. --dist-timeout becomes $DEEPWORKS_DIST_TIMEOUT,
    which the processes launched below (or by torchrun) read."""
    from deepworks.errors import ConfigError
    from deepworks.runtime import DIST_TIMEOUT_ENV, dist_timeout as timeout_of, parse_master_addr

    if dist_timeout is not None:
        os.environ[DIST_TIMEOUT_ENV] = str(timeout_of(dist_timeout, "--dist-timeout").total_seconds())
    else:
        timeout_of()  # a bad $DEEPWORKS_DIST_TIMEOUT is refused here, once
    if nnodes < 1:
        raise ConfigError(f"--nnodes: expected the number of machines, 1 or more, got {nnodes}.")
    if not 0 <= node_rank < nnodes:
        raise ConfigError(f"--node-rank: expected 0 to {nnodes - 1} (this machine's place among --nnodes {nnodes}), "
                          f"got {node_rank}. Fix: give each machine its own rank; node 0 hosts the rendezvous.")
    if master_addr is None:
        if nnodes > 1:
            raise ConfigError(f"--master-addr: needed with --nnodes {nnodes}: the HOST[:PORT] of node 0, which every "
                              "node reaches (e.g. --master-addr 10.0.0.1:29500), the same on every node.")
        return None
    return parse_master_addr(master_addr)


def _lost_peer(exc: Exception, again: str, printed: str) -> Exception | None:
    """For a failed collective in a process group (a peer died or stopped answering): the
    error to show instead, one line that says so, with the timeout and how to go on (not
    torch's traceback). None for anything else."""
    from deepworks.errors import DistributedError
    from deepworks.runtime import dist_timeout, lost_peer

    what = lost_peer(exc)
    if what is None:
        return None
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    node, nodes = os.environ.get("GROUP_RANK"), os.environ.get("GROUP_WORLD_SIZE")
    place = f"rank {rank} of {world}" + (f" (node {node} of {nodes})" if node is not None and nodes else "")
    nproc = os.environ.get("LOCAL_WORLD_SIZE", "1")
    if nodes not in (None, "1"):
        rerun = f"`{again} --nnodes {nodes} --nproc {nproc}` (with each node's --node-rank and --master-addr)"
    else:
        rerun = f"`{again} --nproc {nproc}`"
    return DistributedError(
        f"{place}: lost contact with the other training processes ({what}): a process or node ended or "
        f"did not answer within the {dist_timeout().total_seconds():g} s collective timeout (--dist-timeout). "
        f"Fix: start every node again and go on from the last checkpoint with {rerun}{printed}."
    )


def _config_source(config: Path | None, resume: Path | None, **columns: str | None) -> Path | dict | None:
    """``config`` itself (a YAML file), or the config inferred from the data it names."""
    given = [f"--{flag}" for flag, value in columns.items() if value is not None]
    if resume is not None and given:
        raise DeepworksError(f"train --resume RUN_DIR takes no {', '.join(given)}: a run continues with its own "
                             "config.")
    if config is None or resume is not None:
        if given:
            raise DeepworksError(f"train {' '.join(given)}: these name the columns of a table file; give the file "
                                 "(deepworks train TABLE.csv --target COLUMN).")
        return config
    from deepworks.autoconfig import config_for_data, is_data_path

    if not is_data_path(config):
        if given:
            raise DeepworksError(
                f"train {' '.join(given)}: {config} is a config, which names its columns itself. Fix: set them in "
                f"the config or with --set (--set data.target=COLUMN), or give the data file instead of the config."
            )
        return config
    return config_for_data(config, **columns)


def _print_inferred(config: dict, set_: list[str] | None) -> None:
    """The inferred keys, the model they get and the overrides, before the run starts (once, not
    once per process): what the data implied, short; the run's config.yaml holds every key."""
    import yaml

    from deepworks.config import load_config

    if os.environ.get("RANK", "0") != "0":
        return
    model = load_config(config, set_ or []).model.name  # a bad --set is refused here, before any work
    lines = [f"  {key}: " + (yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
                             if isinstance(value, dict) else str(value)) for key, value in config.items()]
    lines += [f"  model: {model}"] + [f"  --set {item}" for item in set_ or []]
    out.print("config (inferred from the data; the run directory's config.yaml holds every key):\n" + "\n".join(lines),
              highlight=False, soft_wrap=True, markup=False)


def _train(config: Path | dict | None, set_: list[str] | None, run_dir: Path | None, resume: Path | None) -> None:
    import deepworks
    from deepworks.runtime import distributed_context

    if resume is not None:
        if config is not None or set_:
            raise DeepworksError("train --resume RUN_DIR takes no CONFIG or --set: a run continues with its own config.")
        run = deepworks.resume(resume)
    else:
        if config is None:
            raise DeepworksError("train: give a CONFIG.yaml (`deepworks examples` lists the example configs), the data (a folder of class "
                                 "subfolders, or a table file), or --resume RUN_DIR.")
        run = deepworks.train(config, overrides=set_ or [], run_dir=run_dir)
    if distributed_context().is_main:
        _print_summary(run.summary, run.dir)


def _config_asks_for_cv(config: Path | dict | None, set_: list[str] | None, resume: Path | None) -> bool:
    if config is None or resume is not None:
        return False
    from deepworks.config import load_config

    return load_config(config, set_ or []).data.cv is not None


def _cross_validate(config: Path | dict | None, set_: list[str] | None, run_dir: Path | None, folds: int | None) -> None:
    import deepworks

    if config is None:
        raise DeepworksError("train --cv: give a CONFIG.yaml or the data (a folder of class subfolders, or a table "
                             "file).")
    summary = deepworks.cross_validate(config, folds=folds, overrides=set_ or [], run_dir=run_dir)
    table = Table(title=f"{summary['folds']}-fold cross-validation (validation figures)", show_header=True)
    table.add_column("fold")
    metrics = list(summary["mean"])
    for m in metrics:
        table.add_column(m, justify="right")
    for row in summary["per_fold"]:
        table.add_row(str(row["fold"]), *(f"{row[m]:.4f}" for m in metrics))
    table.add_row("mean ± std", *(f"{summary['mean'][m]:.4f} ± {summary['std'][m]:.4f}" for m in metrics))
    out.print(table)
    test = summary["test"]
    out.print("test (final model, all non-test data): " + ", ".join(f"{m} {test[m]:.4f}" for m in metrics if m in test))


def _check_before_launch(config: Path | dict | None, set_: list[str] | None, resume: Path | None) -> None:
    from deepworks.config import load_config
    from deepworks.training.tracking import check_trackers

    if resume is not None:
        if not (resume / "config.yaml").is_file():
            raise DeepworksError(f"{resume}: not a deepworks run directory (no config.yaml).")
        from deepworks.models.external import run_config

        check_trackers(run_config(resume).train)
    elif config is not None:
        check_trackers(load_config(config, set_ or []).train)  # a missing package is reported once, not once per process


_LAUNCH_OPTIONS = ("--nproc", "--nnodes", "--node-rank", "--master-addr", "--dist-timeout")


def _torchrun(nproc: int, nnodes: int = 1, node_rank: int = 0, master: tuple[str, int] | None = None) -> int:
    """Run this same command under ``torchrun`` (without the launch options) with ``nproc``
    processes on this node: alone (a standalone rendezvous on a free port), or as node
    ``node_rank`` of ``nnodes``, all meeting at ``master`` (node 0's static rendezvous)."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if arg in _LAUNCH_OPTIONS:
            skip = True
            continue
        if arg.startswith(tuple(f"{option}=" for option in _LAUNCH_OPTIONS)):
            continue
        args.append(arg)
    if master is None:
        launch = ["--standalone"]
    else:
        launch = [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={master[0]}",
                  f"--master-port={master[1]}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, f"--nproc-per-node={nproc}",
           "-m", "deepworks", *args]
    return subprocess.call(cmd)


def _print_summary(summary: dict, run_dir: Path) -> None:
    task = summary.get("task")
    if task == "generation":
        final = summary.get("final") or {}
        out.print("final epoch: " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()))
        out.print(f"epochs run: {summary.get('epochs_run')}, training time: {summary.get('wall_seconds', 0):.1f} s")
        out.print(f"samples: {run_dir / summary.get('samples', 'samples')}")
        out.print(f"run directory: {run_dir}  (deepworks generate {run_dir} --n 16 --out DIR)")
        return
    if task == "forecasting":
        percent = next((k for k in ("mape", "smape") if k in (summary.get("test") or summary.get("val") or {})), "mape")
        columns: tuple[str, ...] = ("mae", "rmse", percent, "loss")
    else:
        columns = ("mae", "rmse", "r2", "loss") if task == "regression" else ("accuracy", "macro_f1", "loss")
    table = Table(title="results (best model)", show_header=True)
    table.add_column("split")
    for col in columns:
        table.add_column(col, justify="right")
    for split in ("train", "val", "test"):
        m = summary.get(split)
        if m:
            table.add_row(split, *(f"{m[c]:.4f}" if m.get(c) is not None else "-" for c in columns))
    out.print(table)
    out.print(
        f"epochs run: {summary.get('epochs_run')} (best {summary.get('best_epoch')}), "
        f"training time: {summary.get('wall_seconds', 0):.1f} s"
    )
    out.print(f"run directory: {run_dir}")


@app.command()
def generate(
    run_dir: Annotated[Path, typer.Argument(help="a GAN run directory (dcgan, cgan, wgan-gp)")],
    n: Annotated[int, typer.Option("--n", help="how many samples")] = 16,
    label: Annotated[
        Optional[str], typer.Option("--label", help="cgan: the class to generate (index or name)")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the noise: the same seed gives the same images")] = 0,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out", help="folder for the PNGs (one per sample) and grid.png (default runs/generated/<run's name>)")] = None,
) -> None:
    """Sample a GAN run's generator: one PNG per sample plus grid.png in --out."""
    import deepworks
    from deepworks.runs import default_output

    if out_dir is None:
        out_dir = default_output("generated", Path(run_dir).resolve().name)

    chosen: int | str | None = label
    if label is not None and label.strip().lstrip("-").isdigit():
        chosen = int(label)
    images = deepworks.generate(run_dir, n, label=chosen, seed=seed, out=out_dir)
    out.print(f"{len(images)} sample(s) and grid.png in {out_dir}")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    split: Annotated[str, typer.Option(help="val or test (or train)")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Accuracy, per-class and macro precision/recall/F1 and the confusion matrix of a run's best model."""
    import deepworks
    from deepworks.evaluation import render_regression_report, render_report
    from deepworks.evaluation.forecasting import render_forecast_report

    report = deepworks.evaluate(run_dir, split=split)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        renders = {"regression": render_regression_report, "forecasting": render_forecast_report}
        render = renders.get(report.get("task"), render_report)
        out.print(render(report, title=f"{run_dir} - {split} split"))


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    images: Annotated[
        Optional[list[Path]],
        typer.Argument(help="image files, folders of images or glob patterns ('photos/*.jpg'); CSV or Parquet files "
                            "for a table run; for a text run, CSV files (its text column) or text files, one text per "
                            "line; for a forecasting run, CSV files of history"),
    ] = None,
    text: Annotated[
        Optional[list[str]], typer.Option("--text", help="a text to classify (text runs; repeatable)")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="how many classes to show")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    out_path: Annotated[
        Optional[Path],
        typer.Option("--out", help="write the predictions to this .csv, .parquet or .jsonl file, one row per input "
                                   "(forecasting: the forecast as .csv or .json, the PNG beside it; without --out the PNG goes to "
                                   "runs/forecasts/)"),
    ] = None,
    probabilities: Annotated[
        bool, typer.Option("--probabilities", help="with --out: one column per class with its probability")
    ] = False,
    on_error: Annotated[
        str, typer.Option("--on-error", help="raise: a bad input stops the command; skip: report it and go on")
    ] = "raise",
    batch_size: Annotated[
        Optional[int], typer.Option("--batch-size", min=1, help="inputs per forward pass (default: up to 256)")
    ] = None,
) -> None:
    """Predict with a run's best model: image files or folders, a table run's CSV or Parquet rows,
    or texts; for a forecasting run, forecast the steps after each CSV file of history. Inputs
    are read and predicted a batch at a time, with a progress bar on long inputs."""
    import deepworks
    from deepworks.errors import ConfigError
    from deepworks.predictor import check_out_suffix

    if on_error not in ("raise", "skip"):
        raise ConfigError(f"--on-error: expected raise or skip, got {on_error!r}.")
    predictor = deepworks.Predictor(run_dir, batch_size=batch_size)
    items: list = list(text or []) + list(images or [])
    if not items:
        raise ConfigError("predict: give at least one input (a file, a folder, a glob pattern, or --text).")
    if text and predictor.inputs.json_key != "texts":
        raise ConfigError(f"predict --text: {run_dir} is not a text run (it reads {predictor.inputs.reads}). "
                          "Fix: give input files instead.")
    if predictor.kind == "series":
        _print_forecasts(predictor.predict(items, out=out_path), as_json)
        return
    if out_path is not None:
        check_out_suffix(out_path)
        done = predictor.predict_to(items, out_path, top_k, probabilities=probabilities, on_error=on_error)
        skipped = f"; {done['skipped']} skipped (see the error column)" if done["skipped"] else ""
        out.print(f"wrote {done['rows']} prediction(s) to {escape(str(out_path))}{skipped}", highlight=False,
                  soft_wrap=True)
        return
    results = predictor.predict(items, top_k=top_k, on_error=on_error)
    if as_json:
        print(json.dumps(results, indent=2))
        return
    table = Table(show_header=True)
    table.add_column("input", overflow="fold")
    table.add_column("prediction")
    ranked = bool(results) and "top_k" in results[0]
    if ranked:
        table.add_column(f"top {top_k}")
    for r in results:
        if "file" not in r:  # a text given on the command line, or a row of an array
            shown = str(r.get("text", r.get("index", r.get("row", ""))))
            where = shown if len(shown) <= 60 else shown[:57] + "..."
        else:
            where = f"{r['file']}:{r['line']}" if "line" in r else r["file"]
        if ranked:
            table.add_row(where, r["prediction"], ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top_k"]))
        else:
            value = r["prediction"]
            shown = ", ".join(f"{k} {v:.6g}" for k, v in value.items()) if isinstance(value, dict) else f"{value:.6g}"
            table.add_row(where, shown)
    out.print(table)
    for s in predictor.skipped:
        err.print(f"skipped: {escape(s['error'])}", highlight=False)


def _print_forecasts(results: list[dict], as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        rows = r["forecast"]
        table = Table(title=f"{r['file']}: after {r['last']}", show_header=True)
        for col in rows[0]:
            table.add_column(col, justify="left" if not table.columns else "right")
        for row in rows:
            table.add_row(*(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row.values()))
        out.print(table)
        out.print(f"wrote {escape(str(r['png']))}" + (f" and {escape(str(r['out']))}" if r.get("out") else ""),
              highlight=False, soft_wrap=True)


@app.command()
def inspect(
    config: Annotated[Path, typer.Argument(help="the run's YAML config")],
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="override a key: --set model.padding=valid (repeatable)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """The model's layers: output shape, parameters, trainable, receptive field (no training)."""
    from deepworks.config import load_config
    from deepworks.inspection import inspect_config, render_summary

    summary = inspect_config(load_config(config, set_ or []))
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        out.print(render_summary(summary))
        t = summary.get("transfer")
        if t:
            learning = len(t["tuned_blocks"])
            when = f" after {t['warmup_epochs']} frozen epochs" if t["warmup_epochs"] and learning else ""
            rate = f" at lr x {t['backbone_lr_scale']:g}" if learning else ""
            out.print(f"transfer: {t['mode']}; new head {t['head']}; {learning} of {t['blocks']} body blocks learn{rate}"
                      f"{when}" + (f" (from {t['tuned_blocks'][0]} up)" if learning else ""))


@app.command()
def datasets(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """List the built-in datasets."""
    from deepworks.data import list_datasets

    rows = list_datasets()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(show_header=True)
    table.add_column("name", no_wrap=True)
    for col in ("samples", "classes", "input", "test split", "description"):
        table.add_column(col)
    for r in rows:
        shape = r.get("input_shape")
        table.add_row(
            r["name"], str(r.get("size", "")), str(r.get("classes", "")),
            "x".join(map(str, shape)) if shape else str(r.get("input") or ("series" if r.get("task") == "forecasting" else "")),
            "official" if r.get("official_test") else "carved", r.get("description", ""),
        )
    out.print(table)
    out.print(
        "Your own data works too: an image folder with one subfolder per class (data.path: path/to/folder),\n"
        "a CSV listing image files (data.path: labels.csv, data.image: file_column, data.target: label_column),\n"
        "a CSV table (data.path: table.csv, data.target: label_column), a CSV of texts\n"
        "(data.path: reviews.csv, data.text: text_column, data.target: label_column),\n"
        "or a time series to forecast (data.path: series.csv, data.time: time_column, data.target: column)."
    )


def _example_names(incomplete: str) -> list[str]:
    from deepworks.examples import list_examples

    return [row["name"] for row in list_examples() if row["name"].startswith(incomplete)]


@app.command()
def examples(
    name: Annotated[Optional[str], typer.Argument(help="an example (no argument: list them); alone, its path is "
                                                       "printed", autocompletion=_example_names)] = None,
    dest: Annotated[
        Optional[Path], typer.Argument(help="with --copy: a .yaml file, or a folder for NAME.yaml (default: ./NAME.yaml)")
    ] = None,
    copy: Annotated[bool, typer.Option("--copy", help="copy NAME (and the data it reads) to DEST; never overwrites")] = False,
) -> None:
    """The example configs that come with deepworks: list them, print one's path, or copy one to
    train or edit (`deepworks examples quickstart --copy`, then `deepworks train quickstart.yaml`)."""
    from deepworks.errors import ConfigError
    from deepworks.examples import copy_example, example_path, list_examples

    if name is None:
        if copy or dest is not None:
            raise ConfigError("deepworks examples --copy: name the example to copy (deepworks examples NAME --copy).")
        table = Table(title="example configs: deepworks examples NAME [--copy [DEST]]", show_header=True)
        table.add_column("name", no_wrap=True)
        table.add_column("what it trains", overflow="fold")
        for row in list_examples():
            table.add_row(row["name"], escape(row["description"]))
        out.print(table)
        return
    if not copy:
        if dest is not None:
            raise ConfigError(f"deepworks examples {name} {dest}: DEST goes with --copy "
                              f"(deepworks examples {name} --copy {dest}).")
        print(example_path(name))  # plain, never wrapped: $(deepworks examples NAME) is a path
        return
    done = copy_example(name, dest)
    config, folder = done["config"], done["folder"]
    data = "".join(f" and {escape(str(p))}" for p in done["data"])
    out.print(f"wrote {escape(str(config))}{data}", highlight=False, soft_wrap=True)
    if done["data"] and folder.resolve() != Path.cwd().resolve():  # its data path is relative to the working folder
        out.print(f"train it from {escape(str(folder))}, where its data is: cd {escape(str(folder))} && deepworks "
                  f"train {escape(config.name)}", highlight=False, soft_wrap=True)
    else:
        out.print(f"train it: deepworks train {escape(str(config))}", highlight=False, soft_wrap=True)


@app.command()
def models(
    name: Annotated[Optional[str], typer.Argument(help="one model: its keys with descriptions")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List the models (built-in and added by installed packages) with their keys and defaults."""
    from deepworks.models.registry import describe_model, describe_models

    rows = [describe_model(name)] if name is not None else describe_models()
    if as_json:
        print(json.dumps(rows, indent=2, default=repr))
        return
    if name is not None:
        row = rows[0]
        out.print(f"[bold]{escape(row['name'])}[/bold] ({escape(row['origin'])}): {escape(row['description'])}",
                  highlight=False, soft_wrap=True)
        out.print(f"reads: {escape(row['inputs'])}", highlight=False)
        table = Table(show_header=True)
        for col in ("key", "type", "default", "description"):
            table.add_column(col, overflow="fold")
        for p in row["params"]:
            table.add_row(escape(p["name"]), escape(p["type"]), "(required)" if p["required"] else escape(_yaml_value(p["default"])),
                          escape(p["description"]))
        out.print(table if row["params"] else "keys: none")
        out.print("Every model also takes model.init, model.zero_bias, model.pretrained and model.weights "
                  "(deepworks inspect CONFIG shows the layers).", highlight=False)
        return
    for r in rows:  # one model a paragraph: its keys are too many for a table's column
        out.print(f"[bold]{escape(r['name'])}[/bold] ({escape(r['origin'])}; reads {escape(r['inputs'])}): "
                  f"{escape(r['description'])}", highlight=False, soft_wrap=True)
        keys = ", ".join(f"{p['name']}" + (" (required)" if p["required"] else f"={_yaml_value(p['default'])}")
                         for p in r["params"])
        out.print(f"    keys: {escape(keys) or 'none'}", highlight=False, soft_wrap=True)
    out.print("`deepworks models NAME` describes one model's keys. A model of your own: model.name: "
              "'package.module:factory' (docs/guide/models.md, \"Your own model\").", highlight=False)


def _yaml_value(value: object) -> str:
    import yaml

    try:
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()
    except yaml.YAMLError:
        return repr(value)


@app.command("lr-find")
def lr_find(
    config: Annotated[Path, typer.Argument(help="a run config (YAML)")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a key: key.path=value")] = None,
    out_path: Annotated[Optional[Path], typer.Option("--out", help="the plot (PNG; default runs/lr-find/<config name>.png); a JSON goes beside it")] = None,
    steps: Annotated[int, typer.Option("--steps", min=10, help="steps of the range test")] = 200,
    start_lr: Annotated[float, typer.Option("--start-lr", min=0.0, help="first learning rate")] = 1e-7,
    end_lr: Annotated[float, typer.Option("--end-lr", min=0.0, help="last learning rate")] = 10.0,
) -> None:
    """Learning-rate range test: loss against an exponentially growing learning rate, on a copy
    of the model (no run directory), with a suggested learning rate."""
    import deepworks

    result = deepworks.lr_find(config, overrides=set_ or (), out=out_path, steps=steps, start_lr=start_lr, end_lr=end_lr)
    table = Table(title=f"learning-rate range test ({result['optimizer']}, {result['steps']} steps)")
    table.add_column("learning rate", justify="right")
    table.add_column("smoothed loss", justify="right")
    n = len(result["smoothed"])
    for i in sorted({int(round(k * (n - 1) / 9)) for k in range(10)}):
        table.add_row(f"{result['lrs'][i]:.3g}", f"{result['smoothed'][i]:.4f}")
    out.print(table)
    out.print(
        f"suggested learning rate: [bold]{result['suggestion']:.3g}[/bold] (the middle of the smoothed loss's longest "
        f"descent; the loss was lowest at {result['min_lr_at']:.3g}; {result['stopped']}). Use it: --set "
        f"train.optimizer.lr={result['suggestion']:.3g}, or train.optimizer.lr: auto to run this test before training."
    )
    out.print(f"wrote {escape(str(result['files']['png']))} and {escape(str(result['files']['json']))}",
              highlight=False, soft_wrap=True)


@app.command()
def importance(
    run_dir: Annotated[Path, typer.Argument(help="a tabular run directory")],
    split: Annotated[str, typer.Option(help="the split to permute: val, test or train")] = "val",
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="permutations per column")] = 5,
    keep_top: Annotated[
        Optional[int], typer.Option("--keep-top", min=1, help="also write config-topK.yaml training on the K best columns")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="seed of the permutations")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Permutation importance of each input column of a tabular run (drop in accuracy, or R²)."""
    import deepworks

    result = deepworks.importance(run_dir, split=split, repeats=repeats, seed=seed, keep_top=keep_top)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    metric = result["metric"]
    table = Table(title=f"permutation importance ({result['split']} split)", show_header=True)
    table.add_column("#", justify="right")
    table.add_column("column", overflow="fold")
    table.add_column(f"mean {metric} drop", justify="right")
    table.add_column("std", justify="right")
    for rank, row in enumerate(result["columns"], 1):
        table.add_row(str(rank), row["column"], f"{row['mean_drop']:.4f}", f"{row['std_drop']:.4f}")
    out.print(table)
    out.print(
        f"baseline {metric}: {result['baseline']:.4f} on {result['samples']} rows, "
        f"{result['repeats']} permutation(s) per column"
    )
    files = result["files"]
    out.print(f"wrote {escape(str(files['json']))} and {escape(str(files['png']))}", highlight=False, soft_wrap=True)
    if "config" in files:
        out.print(f"the run's config on the top {keep_top} column(s): {files['config']}")
        out.print(f"train on them: deepworks train {files['config']}")


@app.command()
def projection(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    layer: Annotated[
        Optional[str], typer.Option("--layer", help="a module name (default: the input of the last layer with parameters)")
    ] = None,
    method: Annotated[str, typer.Option("--method", help="pca or tsne")] = "pca",
    split: Annotated[str, typer.Option(help="val, test or train")] = "val",
    max_points: Annotated[int, typer.Option("--max-points", min=3, help="t-SNE: at most this many samples")] = 2000,
    seed: Annotated[int, typer.Option("--seed", min=0, help="seed of t-SNE and its sample")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """A layer's activations projected to 2-D (PCA or t-SNE): a scatter PNG and a CSV of the points."""
    import deepworks

    result = deepworks.projection(run_dir, layer=layer, method=method, split=split, max_points=max_points, seed=seed)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    name = "t-SNE" if result["method"] == "tsne" else "PCA"
    out.print(
        f"{name} of layer {result['layer']!r} ({result['captured']}, {result['dims']} values per sample) "
        f"on {result['points']} {result['split']} samples"
    )
    out.print(f"wrote {escape(str(result['png']))} and {escape(str(result['csv']))}", highlight=False, soft_wrap=True)


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="two or more run directories")],
    out_path: Annotated[Optional[Path], typer.Option("--out", help="the HTML page (default: runs/compare/compare.html)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the tables as JSON")] = False,
) -> None:
    """Runs side by side: the config keys that differ, their results, and compare.html with the
    learning curves overlaid."""
    import deepworks
    from deepworks.reporting.compare import figure_text, value_text

    result = deepworks.compare(run_dirs, out=out_path)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    names = [r["name"] for r in result["runs"]]
    for title, first, rows, shown in (
        ("config keys that differ", "key", result["config"], lambda key, v: value_text(v)),
        ("results (summary.json)", "figure", result["metrics"], figure_text),
    ):
        if not rows:
            out.print("the resolved configs are identical")
            continue
        table = Table(title=title, show_header=True)
        table.add_column(first, overflow="fold")
        for name in names:
            table.add_column(escape(name), justify="right", overflow="fold")
        for key, values in rows.items():
            table.add_row(escape(key), *(escape(shown(key, v)) for v in values))
        out.print(table)
    for note in result["notes"]:
        out.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    out.print(f"wrote {escape(result['html'])}", highlight=False, soft_wrap=True)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a run directory")]) -> None:
    """Write RUN_DIR/report.html: curves, metrics, confusion matrix, calibration, gradients, model (one self-contained page)."""
    import deepworks

    out.print(f"wrote {escape(str(deepworks.report(run_dir)))}", highlight=False, soft_wrap=True)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    format_: Annotated[str, typer.Option("--format", help="the file format: onnx")] = "onnx",
    out_path: Annotated[
        Optional[Path], typer.Option("--out", help="where the model goes (default RUN_DIR/model.onnx; the sidecar is <out>.json)")
    ] = None,
    opset: Annotated[Optional[int], typer.Option("--opset", help="ONNX opset (default 18)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the sidecar as JSON")] = False,
) -> None:
    """Export a run's best model (fp32, dynamic batch) with what it needs besides its weights,
    checked against PyTorch on validation samples (fails above a max abs diff of 1e-4)."""
    import deepworks

    _refuse_data_given_in_python(run_dir, "export")
    result = deepworks.export(run_dir, format=format_, out=out_path, opset=opset)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    parity = result["parity"]
    batches = ", ".join(f"{k} {v:.3g}" for k, v in parity["batches"].items())
    out.print(f"{result['path']} (opset {result['opset']}, {result['exporter']} exporter) and {result['sidecar']}",
              soft_wrap=True)
    out.print(f"parity on {parity['split']} samples: max abs diff {parity['max_abs_diff']:.3g} "
              f"(allowed {parity['tolerance']:g}; per batch: {batches})", highlight=False, soft_wrap=True)


def _refuse_data_given_in_python(run_dir: Path, command: str) -> None:
    """Export checks the exported model on the run's own validation samples; a run trained on data
    given in Python (deepworks.train(source=...)) keeps no copy of it, so only Python can give it."""
    from deepworks.config import MEMORY_DATASETS, read_yaml
    from deepworks.runs import existing_run

    run = existing_run(run_dir)
    data = (read_yaml(run.config) or {}).get("data") or {}
    if data.get("dataset") in MEMORY_DATASETS:
        raise DeepworksError(
            f"deepworks {command} {run_dir}: the run was trained on data given in Python (deepworks.train(source=...)), "
            "and its export checks the model on that data, which the command line cannot give. Fix: export it from "
            f"Python with the same data: deepworks.export({str(run_dir)!r}, source=...)"
            + (", then serve it with --backend onnx." if command == "serve" else ".")
        )


@app.command()
def serve(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (image, table or text classification/regression)")],
    host: Annotated[str, typer.Option("--host", help="address to bind; loopback unless you open it (0.0.0.0)")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port")] = 8000,
    backend: Annotated[str, typer.Option("--backend", help="auto (onnx when the run has a passing export, else "
                                         "torch), torch (the best weights) or onnx (model.onnx, exported first when "
                                         "missing)")] = "auto",
    workers: Annotated[int, typer.Option("--workers", min=1, help="server processes (each loads the model)")] = 1,
    device: Annotated[str, typer.Option("--device", help="where the torch backend runs the model: cpu, cuda or "
                                        "cuda:N (the onnx backend runs on the CPU)")] = "cpu",
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="most inputs run through the model at once")] = 32,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", min=0, help="how long a batch waits for more "
                                               "requests after its first")] = 5.0,
    queue_limit: Annotated[int, typer.Option("--queue-limit", min=1, help="requests waiting beyond this get 503 "
                                             "with Retry-After")] = 256,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", min=1, help="larger request bodies get 413")] = (
        10 * 1024 * 1024),
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=1, help="images declaring more pixels get 413")] = (
        40_000_000),
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="DEEPWORKS_API_KEY", show_envvar=True, show_default=False,
        help="every request but /health must send it (Authorization: Bearer KEY or X-API-Key: KEY); "
             "the environment variable keeps it out of the shell history and the process list")] = None,
) -> None:
    """Serve a run over HTTP: POST /predict (an image upload in the form field `file`, or JSON rows
    or texts), GET /health, GET /ready, GET / (a page to try it), GET /docs (OpenAPI)."""
    try:
        import uvicorn
    except ImportError:
        from deepworks.errors import ConfigError

        raise ConfigError("deepworks serve needs FastAPI and uvicorn: pip install 'deepworks[serve]'.") from None
    from deepworks.serve.app import (
        BACKENDS, ENV_SETTINGS, ServedModel, check_api_key, check_device, choose_backend, create_app, exposure_warning,
    )

    if api_key is not None:
        check_api_key(api_key)  # an unusable key fails here (without quoting it), before an export or a worker
    if backend not in ("auto", *BACKENDS):
        from deepworks.errors import ConfigError

        raise ConfigError(f"--backend {backend}: expected auto, torch or onnx. Fix: leave it out (auto: onnx when the run "
                          "has a passing export, else torch).")
    if backend == "auto":
        backend, why = choose_backend(run_dir, device)
        out.print(f"backend {backend}: {escape(why)}; --backend chooses", highlight=False, soft_wrap=True)
    check_device(device, backend)  # as does a device this machine lacks
    if backend == "onnx" and not (Path(run_dir) / "model.onnx").exists():
        import deepworks

        _refuse_data_given_in_python(run_dir, "serve")
        out.print(f"exporting {escape(str(run_dir))} to ONNX first (deepworks export)", highlight=False)
        deepworks.export(run_dir)
    settings = {"run_dir": str(Path(run_dir).resolve()), "backend": backend, "max_batch": max_batch,
                "max_wait_ms": max_wait_ms, "queue_limit": queue_limit, "max_body_bytes": max_body_bytes,
                "max_pixels": max_pixels, "device": device}
    if api_key is not None:
        settings["api_key"] = api_key
    ServedModel(settings["run_dir"], backend, device)  # a missing or unsuitable run fails here, before any worker starts
    warning = exposure_warning(host, api_key)
    if warning:
        err.print(f"warning: {escape(warning)}", highlight=False, soft_wrap=True)
    out.print(f"serving {escape(str(run_dir))} on http://{escape(host)}:{port} (backend {backend}"
              f"{' on ' + device if device != 'cpu' else ''}, "
              f"{workers} worker{'s' if workers > 1 else ''}{', API key required' if api_key else ''}); "
              "docs at /docs", highlight=False, soft_wrap=True)
    if workers > 1:
        os.environ[ENV_SETTINGS] = json.dumps(settings)
        uvicorn.run("deepworks.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level="info", timeout_graceful_shutdown=30)
    else:
        uvicorn.run(create_app(**settings), host=host, port=port, log_level="info", timeout_graceful_shutdown=30)


@app.command()
def tune(
    config: Annotated[Path, typer.Argument(help="a YAML config with a tune section (metric, space)")],
    trials: Annotated[
        Optional[int], typer.Option("--trials", min=1, help="finished trials the study ends with (default: tune.trials, "
                                    "the grid's size, or 20)")
    ] = None,
    sampler: Annotated[Optional[str], typer.Option("--sampler", help="grid, random, tpe (default), cmaes or nsga2")] = None,
    pruner: Annotated[Optional[str], typer.Option("--pruner", help="none, median (default) or hyperband")] = None,
    storage: Annotated[
        Optional[str], typer.Option("--storage", help="database URL, e.g. postgresql://user:pw@host/db: workers running "
                                    "the same command share the study (default: SQLite in the study directory)")
    ] = None,
    study: Annotated[Optional[str], typer.Option("--study", help="the study's name (default: the config's name)")] = None,
    study_dir: Annotated[
        Optional[Path], typer.Option("--study-dir", help="where trials and results go (default: runs/studies/<study>)")
    ] = None,
    timeout: Annotated[
        Optional[float], typer.Option("--timeout", min=0, help="start no trial after this many seconds")
    ] = None,
    cv: Annotated[Optional[int], typer.Option("--cv", help="score each trial by k-fold cross-validation")] = None,
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="override a key of the config: --set train.epochs=5 (repeatable)")
    ] = None,
) -> None:
    """Search hyperparameters with Optuna over the config's tune.space; each trial is a run directory.
    Writes trials.csv, best.yaml, study.json and study.html into the study directory."""
    from deepworks.tune import tune as run_study

    try:
        summary = run_study(config, trials=trials, sampler=sampler, pruner=pruner, storage=storage, study=study,
                            study_dir=study_dir, timeout=timeout, cv=cv, overrides=set_ or [])
    except KeyboardInterrupt:
        err.print("interrupted: the running trial is marked failed; run the same command again to continue the study")
        raise typer.Exit(130) from None
    _print_study(summary)


def _print_study(summary: dict) -> None:
    import csv

    root = Path(summary["directory"])
    metrics = summary["metrics"]
    with open(root / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keys = list((summary.get("space") or {}).keys())
    table = Table(title=f"study {escape(summary['study'])}", show_header=True)
    for col in ["trial", "state", *metrics, *keys, "epochs"]:
        table.add_column(escape(col), justify="left" if col == "state" else "right", overflow="fold",
                         no_wrap=col in ("trial", "state"))
    for r in rows:
        cells = []
        for col in ["trial", "state", *metrics, *keys, "epochs"]:
            v = r.get(col, "")
            try:
                v = f"{float(v):.4g}" if col in metrics or (v and "." in v and col in keys) else v
            except ValueError:
                pass
            cells.append(escape(str(v)))
        table.add_row(*cells)
    out.print(table)
    best = summary.get("best")
    if best:
        shown = ", ".join(f"{k} {int(v):,}" if k == "parameters" else f"{k} {v:.4f}" for k, v in best["values"].items())
        out.print(f"best: trial {best['trial']} ({shown}) -> {escape(str(root / 'best.yaml'))}", highlight=False)
    for metric, found in (summary.get("importances") or {}).items():
        if "error" not in found:
            out.print(f"importance for {escape(metric)}: "
                      + ", ".join(f"{escape(k)} {v:.2f}" for k, v in found.items()), highlight=False)
    out.print(f"wrote {escape(str(root / 'study.html'))} and {escape(str(root / 'trials.csv'))}", highlight=False,
              soft_wrap=True)


@app.command()
def lab(
    concept: Annotated[Optional[str], typer.Argument(help="the concept (no argument: list the labs)")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="where the PNGs and lab.json go (default runs/labs/CONCEPT)")] = None,
    fast: Annotated[bool, typer.Option("--fast", help="a smaller experiment, in a few seconds")] = False,
    seed: Annotated[int, typer.Option("--seed", min=0, help="seed of the lab's data splits and models")] = 0,
) -> None:
    """A concept lab: a small, real experiment that shows one idea, with numbers measured on the spot."""
    from deepworks.labs import get_lab, lab_dir, list_labs, run_lab

    if concept is None:
        table = Table(title="concept labs: deepworks lab CONCEPT [--out DIR] [--fast]", show_header=True)
        table.add_column("concept")
        table.add_column("what it shows", overflow="fold")
        for row in list_labs():
            table.add_row(row["name"], row["summary"])
        out.print(table)
        out.print("Each lab is explained in docs/concepts.md, with the config keys behind it.", highlight=False)
        return
    out.print(f"[bold]lab {escape(get_lab(concept).name)}[/bold]" + (" (fast)" if fast else ""), highlight=False)
    result = run_lab(concept, out_dir, fast=fast, seed=seed, echo=lambda line: out.print(escape(line), highlight=False))
    where = lab_dir(concept, out_dir)
    files = ", ".join(result["figures"] + ["lab.json"])
    out.print(f"wrote {escape(files)} in {escape(str(where))} ({result['seconds']:.1f} s)", highlight=False,
              soft_wrap=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # warnings about the user's data or config are messages for them, not source locations
    err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning user errors into a message and exit status 2."""
    code = _main(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # a torchrun worker: its files are written and synced; skip interpreter teardown, where
        # a communication thread still joinable at exit can abort the process (SIGABRT)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    import warnings

    # the CLI prints warnings its own way while a command runs, and puts the process's hook back
    # afterwards (main() called from Python, a notebook or a test must not keep the CLI's printer)
    saved = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return _dispatch(argv)
    finally:
        warnings.showwarning = saved


def _dispatch(argv: list[str] | None) -> int:
    try:
        # the program's name whatever started it (python -m deepworks too): the usage lines and shell
        # completion (which answers to $_DEEPWORKS_COMPLETE) name the command a user types
        code = app(args=argv, prog_name="deepworks", standalone_mode=False)
    except DeepworksError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted: resume with `deepworks train --resume RUN_DIR`")
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return 1
    except typer.TyperException as exc:  # usage errors (bad option, bad value) carry their exit code, 2
        if hasattr(exc, "show"):
            exc.show()
        else:
            err.print(f"[bold red]error:[/] {escape(exc.format_message())}", highlight=False)
        return exc.exit_code
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
