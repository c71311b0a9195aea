"""Seconds per epoch and test accuracy of the reference CNN on Fashion-MNIST, side by side:

  (a) deepworks      deepworks.train() on benchmarks/configs/reference-cnn.yaml, its defaults
  (b) pytorch        the idiomatic loop for data that fits in memory: normalised tensors in a
                     TensorDataset, DataLoader(shuffle=True, num_workers=0), fp32
  (c) lightning      a LightningModule and L.Trainer on the same DataLoaders, fp32
  (d) keras          Keras 3 on the torch backend, model.fit on in-memory numpy arrays, fp32
  (e) limit          a hand-tuned plain-PyTorch loop, the practical limit: tensors on the device,
                     batches by index (randperm, no DataLoader), bf16 autocast, channels_last,
                     fused/foreach AdamW


Same network, optimizer (AdamW lr 1e-3, weight decay 0.01), batch size (128), data
(51,000 train / 9,000 validation carved out of the official training set, official 10k
test) and epochs. An epoch's time is one pass over the training data plus the validation
pass. Each framework runs in its own fresh process (this script with --child). Every row
records the precision it trained in ("fp32" or "bf16").

    python benchmarks/epoch_time.py                      # all five, 3 epochs
    python benchmarks/epoch_time.py --only a,b --epochs 1 --subset 2000
    python benchmarks/epoch_time.py --only deepworks --set train.deterministic=false
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"  # before anything imports keras

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import BATCH_SIZE, LR, SEED, WEIGHT_DECAY, EpochClock, epoch_stats  # noqa: E402

CONFIG = Path(__file__).resolve().parent / "configs" / "reference-cnn.yaml"
FRAMEWORKS = ("deepworks", "pytorch", "lightning", "keras", "limit")
ALIASES = dict(zip("abcde", FRAMEWORKS))


def _log(msg: str) -> None:
    print(msg, flush=True)


def _report_params(info: dict) -> None:
    _log(f"parameters: {info['params']:,} (deepworks' cnn: {info['deepworks_params']:,}) - equal")


# --------------------------------------------------------------------------- (a) deepworks


def run_deepworks(args: argparse.Namespace, root: Path) -> dict:
    import deepworks
    from deepworks.config import parse_overrides

    # data.root only says where the (same) idx files are; --set carries anything else
    overrides = {"data.root": str(root), **dict(parse_overrides(args.set))}
    seen = _seen_at_train_begin()
    with tempfile.TemporaryDirectory(prefix="deepworks-bench-") as tmp:
        run = deepworks.train(
            CONFIG, run_dir=Path(tmp) / "run", overrides=overrides, train={"epochs": args.epochs, "progress": "log"},
            callbacks=[seen],
        )
        sizes = json.loads((run.dir / "data.json").read_text())["sizes"]
    return {
        **epoch_stats([h["seconds"] for h in run.history]),
        "val_accuracy": [round(h["val_accuracy"], 4) for h in run.history],
        "test_accuracy": run.summary["test"]["accuracy"],
        "test_model": f"best epoch by {run.summary.get('monitor')} ({run.summary.get('best_epoch')})",
        "params": common.count_params(run.model),
        "train_size": sizes["train"],
        "val_size": sizes["val"],
        "overrides": overrides,
        "resolved_train_config": run.config.train.model_dump(mode="json"),
        # what the "auto" settings turned into on this machine (as recorded in the run's summary)
        "resolved_runtime": {k: run.summary[k] for k in ("device", "precision", "channels_last") if k in run.summary},
        "precision": run.summary.get("precision"),
        "device": run.summary.get("device"),
        **seen.record(in_memory_bytes=(sizes["train"] + sizes["val"]) * 28 * 28),  # uint8 28x28 images
    }


def _seen_at_train_begin():
    """A callback that reads what the Trainer set up when training begins: whether the model it
    steps is compiled (``train.compile``) and, on a GPU, the memory allocated there. Against the
    bytes of the in-memory training and validation images (uint8) that says where the data sits: at
    least that much allocated means on the GPU, not in host memory copied over batch by batch (only
    the model's weights are there besides; the optimizer's state comes with the first step)."""
    import torch

    import deepworks

    class SeenAtTrainBegin(deepworks.Callback):
        compiled: bool | None = None
        cuda_allocated: int | None = None

        def on_train_begin(self, trainer) -> None:
            self.compiled = isinstance(trainer.forward_model, torch._dynamo.eval_frame.OptimizedModule)
            if trainer.device.type == "cuda":
                torch.cuda.synchronize(trainer.device)
                self.cuda_allocated = torch.cuda.memory_allocated(trainer.device)

        def record(self, in_memory_bytes: int) -> dict:
            on_gpu = None if self.cuda_allocated is None else self.cuda_allocated >= in_memory_bytes
            return {"compiled": self.compiled, "cuda_allocated_at_train_begin_bytes": self.cuda_allocated,
                    "in_memory_data_bytes": in_memory_bytes, "data_on_gpu": on_gpu}

    return SeenAtTrainBegin()


# --------------------------------------------------------------------------- (b) plain PyTorch


def run_pytorch(args: argparse.Namespace, root: Path) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(SEED)
    train_loader, val_loader, test_loader = common.torch_loaders(root, BATCH_SIZE)
    model = common.reference_cnn_torch()
    params = common.check_same_as_deepworks(model, CONFIG)
    _report_params(params)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    clock, val_accs = EpochClock(), []
    for epoch in range(1, args.epochs + 1):
        clock.start()
        model.train()
        for x, y in train_loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        val_loss, val_acc = common.torch_evaluate(model, val_loader)
        seconds = clock.stop()
        val_accs.append(round(val_acc, 4))
        _log(f"epoch {epoch}/{args.epochs}  val loss {val_loss:.4f} accuracy {val_acc:.4f}  ({seconds:.1f}s)")
    _, test_acc = common.torch_evaluate(model, test_loader)
    return {
        **epoch_stats(clock.seconds),
        "val_accuracy": val_accs,
        "test_accuracy": test_acc,
        "test_model": "last epoch",
        **params,
        "train_size": len(train_loader.dataset),
        "val_size": len(val_loader.dataset),
        "data_path": DATA_PATH_TENSORS,
        "num_workers": 0,
        "precision": "fp32",
        "device": "cpu",
    }


# --------------------------------------------------------------------------- (c) Lightning


def run_lightning(args: argparse.Namespace, root: Path) -> dict:
    import lightning as L
    import torch
    import torch.nn.functional as F

    class LitCNN(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = common.reference_cnn_torch()

        def forward(self, x):
            return self.model(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            logits = self(x)
            self.log_dict({"val_loss": F.cross_entropy(logits, y), "val_acc": (logits.argmax(1) == y).float().mean()})

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    class EpochTimer(L.Callback):
        """From the start of a training epoch to its end, which Lightning calls after the epoch's validation."""

        def __init__(self) -> None:
            self.clock = EpochClock()
            self.validated = False
            self.val_accuracy: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.validated = False
            self.clock.start()

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            self.validated = self.validated or not trainer.sanity_checking

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            seconds = self.clock.stop()
            assert self.validated, "Lightning ended the training epoch before validating: the timer would miss it"
            m = trainer.callback_metrics
            self.val_accuracy.append(round(float(m["val_acc"]), 4))
            _log(
                f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  "
                f"val loss {float(m['val_loss']):.4f} accuracy {float(m['val_acc']):.4f}  ({seconds:.1f}s)"
            )

    # in-memory tensors need no workers; Lightning's "does not have many workers" hint does not apply
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    L.seed_everything(SEED)
    train_loader, val_loader, test_loader = common.torch_loaders(root, BATCH_SIZE)
    lit = LitCNN()
    params = common.check_same_as_deepworks(lit.model, CONFIG)
    _report_params(params)
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator="cpu", devices=1, precision="32-true", logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )
    started = time.perf_counter()
    trainer.fit(lit, train_loader, val_loader)
    fit_seconds = time.perf_counter() - started
    _, test_acc = common.torch_evaluate(lit.model, test_loader)
    return {
        **epoch_stats(timer.clock.seconds),
        "fit_wall_s": round(fit_seconds, 3),  # also has the sanity-check validation steps and setup
        "val_accuracy": timer.val_accuracy,
        "test_accuracy": test_acc,
        "test_model": "last epoch",
        **params,
        "train_size": len(train_loader.dataset),
        "val_size": len(val_loader.dataset),
        "data_path": DATA_PATH_TENSORS,
        "num_workers": 0,
        "precision": "fp32",
        "device": "cpu",
    }


# --------------------------------------------------------------------------- (d) Keras


def run_keras(args: argparse.Namespace, root: Path) -> dict:
    import keras

    assert keras.backend.backend() == "torch", keras.backend.backend()

    class EpochTimer(keras.callbacks.Callback):
        """on_epoch_end comes after fit's validation pass."""

        def __init__(self) -> None:
            super().__init__()
            self.clock = EpochClock()
            self.val_accuracy: list[float] = []

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self.clock.start()

        def on_epoch_end(self, epoch, logs=None) -> None:
            self.clock.stop()
            self.val_accuracy.append(round(float(logs["val_accuracy"]), 4))

    keras.utils.set_random_seed(SEED)
    (xtr, ytr), (xva, yva), (xte, yte) = common.numpy_arrays(root)
    model = common.reference_cnn_keras()
    params = common.check_keras_params(model, CONFIG)
    _report_params(params)
    model.compile(
        # epsilon as torch's AdamW (Keras' default is 1e-7)
        optimizer=keras.optimizers.AdamW(learning_rate=LR, weight_decay=WEIGHT_DECAY, epsilon=1e-8),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    timer = EpochTimer()
    model.fit(
        xtr, ytr, batch_size=BATCH_SIZE, epochs=args.epochs, validation_data=(xva, yva), verbose=2, callbacks=[timer]
    )
    _, test_acc = model.evaluate(xte, yte, batch_size=BATCH_SIZE, verbose=0)
    return {
        **epoch_stats(timer.clock.seconds),
        "val_accuracy": timer.val_accuracy,
        "test_accuracy": float(test_acc),
        "test_model": "last epoch",
        **params,
        "train_size": len(xtr),
        "val_size": len(xva),
        "jit_compile": getattr(model, "jit_compile", None),
        "data_path": "in-memory numpy arrays, normalised once, model.fit batching",
        "dtype_policy": keras.config.dtype_policy().name,
        "precision": {"float32": "fp32", "bfloat16": "bf16", "mixed_bfloat16": "bf16"}.get(
            keras.config.dtype_policy().name, keras.config.dtype_policy().name),
        "device": "cpu",
    }


# --------------------------------------------------------------------------- (e) the hand-tuned limit


def run_limit(args: argparse.Namespace, root: Path) -> dict:
    """What a hand-written loop can do on this machine: no framework, no DataLoader, reduced precision."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(SEED)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cl = torch.channels_last
    # the same normalised tensors and split as (b), moved once to the device, channels_last
    (xtr, ytr), (xva, yva), (xte, yte) = (
        (x.to(device).contiguous(memory_format=cl), y.to(device)) for x, y in common.torch_tensors(root)
    )
    model = common.reference_cnn_torch()
    params = common.check_same_as_deepworks(model, CONFIG)
    _report_params(params)
    model = model.to(device, memory_format=cl)
    opt, opt_impl = None, None
    for impl in ("fused", "foreach"):
        try:
            opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, **{impl: True})
            opt_impl = impl
            break
        except (RuntimeError, TypeError, ValueError):
            continue
    if opt is None:
        opt, opt_impl = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY), "default"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def evaluate(x, y) -> tuple[float, float]:
        """Batch 128 like the baselines' validation, bf16 autocast, loss in fp32."""
        model.eval()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        with torch.inference_mode(), autocast():
            for i in range(0, len(x), BATCH_SIZE):
                logits = model(x[i : i + BATCH_SIZE]).float()
                yb = y[i : i + BATCH_SIZE]
                loss_sum += F.cross_entropy(logits, yb, reduction="sum")
                correct += (logits.argmax(1) == yb).sum()
        return float(loss_sum) / len(x), int(correct) / len(x)

    n = len(xtr)
    clock, val_accs = EpochClock(), []
    for epoch in range(1, args.epochs + 1):
        sync()
        clock.start()
        model.train()
        perm = torch.randperm(n, device=device)
        for i in range(0, n, BATCH_SIZE):  # the last, partial batch included, as a DataLoader would
            idx = perm[i : i + BATCH_SIZE]
            x, y = xtr[idx].contiguous(memory_format=cl), ytr[idx]
            opt.zero_grad(set_to_none=True)
            with autocast():
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)  # loss in fp32
            loss.backward()
            opt.step()
        val_loss, val_acc = evaluate(xva, yva)
        sync()
        seconds = clock.stop()
        val_accs.append(round(val_acc, 4))
        _log(f"epoch {epoch}/{args.epochs}  val loss {val_loss:.4f} accuracy {val_acc:.4f}  ({seconds:.1f}s)")
    _, test_acc = evaluate(xte, yte)
    return {
        **epoch_stats(clock.seconds),
        "val_accuracy": val_accs,
        "test_accuracy": test_acc,
        "test_model": "last epoch",
        **params,
        "train_size": n,
        "val_size": len(xva),
        "data_path": "normalised tensors on the device, batches by torch.randperm + indexing (no DataLoader)",
        "precision": "bf16",
        "channels_last": True,
        "optimizer_impl": opt_impl,
        "device": device.type,
        "cpu_native_bf16": _cpu_native_bf16() if device.type == "cpu" else None,
    }


def _cpu_native_bf16() -> bool:
    """As deepworks' auto precision decides: without AVX-512 BF16 / AMX, bf16 is emulated (slower than fp32)."""
    from deepworks.runtime import cpu_supports_bf16

    return cpu_supports_bf16()


DATA_PATH_TENSORS = "TensorDataset of normalised in-memory tensors, DataLoader(batch_size=128, shuffle=True, num_workers=0)"

RUNNERS = {
    "deepworks": run_deepworks, "pytorch": run_pytorch, "lightning": run_lightning, "keras": run_keras, "limit": run_limit,
}


# --------------------------------------------------------------------------- parent and child


def child(args: argparse.Namespace) -> None:
    import torch

    root = Path(args.data_root)
    _log(f"== {args.framework}: {args.epochs} epoch(s), torch {torch.__version__}, {torch.get_num_threads()} threads")
    started = time.perf_counter()
    result = RUNNERS[args.framework](args, root)
    result.update(framework=args.framework, torch_threads=torch.get_num_threads(),
                  process_wall_s=round(time.perf_counter() - started, 3))
    common.write_json(Path(args.result), result)


def parent(args: argparse.Namespace) -> None:
    chosen = _parse_only(args.only)
    common.warn_if_busy()
    info = common.machine()
    root = common.prepare_data_root(Path(args.cache), args.subset)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="epoch-time-") as tmp:
        for fw in chosen:
            out = Path(tmp) / f"{fw}.json"
            cmd = [sys.executable, __file__, "--child", "--framework", fw, "--result", str(out),
                   "--data-root", str(root), "--epochs", str(args.epochs)]
            for item in args.set:
                cmd += ["--set", item]
            started = time.perf_counter()
            proc = subprocess.run(cmd)
            if proc.returncode != 0 or not out.exists():
                print(f"!! {fw} failed (exit status {proc.returncode}); see its output above", file=sys.stderr)
                results[fw] = {"framework": fw, "error": f"exit status {proc.returncode}"}
                continue
            results[fw] = json.loads(out.read_text())
            results[fw]["subprocess_wall_s"] = round(time.perf_counter() - started, 3)
    base = results.get("deepworks", {}).get("s_per_epoch")
    for r in results.values():
        if base and r.get("s_per_epoch"):
            r["deepworks_over_this"] = round(base / r["s_per_epoch"], 3)
    print()
    print(format_table(results))
    report = {
        "benchmark": "epoch_time",
        "machine": info,
        "settings": {
            "config": str(CONFIG.relative_to(Path.cwd()) if CONFIG.is_relative_to(Path.cwd()) else CONFIG),
            "epochs": args.epochs, "subset": args.subset,
            "batch_size": BATCH_SIZE, "deepworks_overrides": args.set, "data_root": str(root),
        },
        "results": results,
    }
    common.write_json(Path(args.out), report)
    print(f"\nwrote {args.out}")
    if any("error" in r for r in results.values()):
        sys.exit(1)


def format_table(results: dict[str, dict]) -> str:
    head = ("framework", "precision", "s/epoch", "1st epoch s", "later s/epoch", "test acc", "deepworks/this")
    rows = [head]
    for fw, r in results.items():
        if "error" in r:
            rows.append((fw, "", "failed", "", "", "", ""))
            continue
        later = r.get("s_per_epoch_after_first")
        ratio = r.get("deepworks_over_this")
        rows.append((
            fw, str(r.get("precision") or "?"), f"{r['s_per_epoch']:.2f}", f"{r['first_epoch_s']:.2f}", f"{later:.2f}" if later else "-",
            f"{r['test_accuracy']:.4f}", f"{ratio:.2f}" if ratio else "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _parse_only(text: str | None) -> list[str]:
    if not text:
        return list(FRAMEWORKS)
    chosen = []
    for item in text.split(","):
        name = ALIASES.get(item.strip(), item.strip())
        if name not in FRAMEWORKS:
            sys.exit(f"--only: unknown framework {item!r}; choose from {', '.join(FRAMEWORKS)} (or a-e)")
        chosen.append(name)
    return chosen


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--only", help="comma-separated subset of: deepworks,pytorch,lightning,keras,limit (or a,b,c,d,e)")
    p.add_argument("--subset", type=int, default=None, help="train on the first N training images (quick checks)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="deepworks config override (YAML value), e.g. --set train.deterministic=false; repeatable")
    p.add_argument("--out", default="benchmarks/results/epoch_time.json")
    p.add_argument("--cache", default=str(common.DEFAULT_DATA_ROOT), help="where the extracted idx files go")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--framework", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--data-root", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be at least 1")
    if args.child:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
