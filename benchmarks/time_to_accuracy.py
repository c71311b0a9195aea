"""Training time until the model reaches a test accuracy, with deepworks.

After every epoch a callback measures the CURRENT model on the official test set. That is
measurement only: nothing is selected on it (training, early stopping and the best-model
choice see only the validation split), its time is kept off the training clock, and the
RNG state is restored around it so the run is the same as without the probe. The result
is the first epoch, and the cumulative training seconds, at which test accuracy >= --target.

    python benchmarks/time_to_accuracy.py                                # examples/configs/fashion-mnist-cnn.yaml
    python benchmarks/time_to_accuracy.py --target 0.90 --set train.epochs=10
    python benchmarks/time_to_accuracy.py --config benchmarks/configs/reference-cnn.yaml --set train.epochs=15
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

import deepworks
from deepworks.data.loaders import TensorData
from deepworks.pipeline import prepare_data

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


class TestAccuracyProbe(deepworks.Callback):
    """Training clock plus a test-set measurement after each epoch, the latter off the clock."""

    def __init__(self, test: TensorData, target: float) -> None:
        self.test, self.target = test, target
        self.records: list[dict[str, Any]] = []
        self._t0 = 0.0
        self._excluded = 0.0  # seconds spent in this probe

    def on_train_begin(self, trainer: deepworks.Trainer) -> None:
        self._t0 = time.perf_counter()

    def on_epoch_end(self, trainer: deepworks.Trainer, epoch: int, logs: dict[str, Any]) -> None:
        paused = time.perf_counter()
        train_seconds = paused - self._t0 - self._excluded
        rng = torch.get_rng_state()
        was_training = trainer.model.training
        report = trainer.evaluate(self.test)  # switches the model to eval mode
        trainer.model.train(was_training)
        torch.set_rng_state(rng)
        probe_seconds = time.perf_counter() - paused
        self._excluded += probe_seconds
        acc = float(report["accuracy"])
        self.records.append({
            "epoch": epoch,
            "train_seconds": round(train_seconds, 3),  # cumulative, probe time excluded
            "epoch_seconds": logs.get("seconds"),  # deepworks' own: train pass + validation
            "val_accuracy": logs.get("val_accuracy"),
            "test_accuracy": round(acc, 6),
            "probe_seconds": round(probe_seconds, 3),
        })
        mark = "  <- target reached" if acc >= self.target and self.first_reached() == epoch else ""
        print(f"  [probe] epoch {epoch}: test accuracy {acc:.4f} after {train_seconds:.1f}s of training{mark}", flush=True)

    def first_reached(self, key: str = "test_accuracy") -> int | None:
        return next((r["epoch"] for r in self.records if r[key] is not None and r[key] >= self.target), None)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="examples/configs/fashion-mnist-cnn.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override; repeatable")
    p.add_argument("--target", type=float, default=0.91, help="test accuracy to reach")
    p.add_argument("--subset", type=int, default=None, help="keep the first N images of the training split (quick checks)")
    p.add_argument("--out", default="benchmarks/results/time_to_accuracy.json")
    args = p.parse_args(argv)

    common.warn_if_busy()
    info = common.machine()
    cfg = deepworks.load_config(args.config, args.set)
    if cfg.train.progress == "auto":
        cfg.train.progress = "log"
    torch.manual_seed(cfg.seed)  # the model's initial weights, as deepworks.train does
    data = prepare_data(cfg)
    if args.subset:
        data.train = TensorData(data.train.x[: args.subset], data.train.y[: args.subset])
    model = deepworks.create_model(
        cfg.model.name, input_shape=data.input_shape, num_classes=len(data.classes), **cfg.model.params
    )
    probe = TestAccuracyProbe(data.test, args.target)
    trainer = deepworks.Trainer(model, cfg.train, callbacks=[probe], seed=cfg.seed, classes=data.classes)
    started = time.perf_counter()
    trainer.fit(data.train, data.val)
    wall = time.perf_counter() - started

    reached = probe.first_reached()
    record = next((r for r in probe.records if r["epoch"] == reached), None)
    result = {
        "benchmark": "time_to_accuracy",
        "machine": info,
        "config": args.config,
        "overrides": args.set,
        "resolved_config": cfg.model_dump(mode="json"),
        "sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "target_test_accuracy": args.target,
        "reached_epoch": reached,
        "reached_train_seconds": record["train_seconds"] if record else None,
        "first_epoch_val_accuracy_reached_target": probe.first_reached("val_accuracy"),
        "epochs_run": trainer.epoch,
        "train_seconds_total": probe.records[-1]["train_seconds"] if probe.records else None,
        "fit_wall_seconds_including_probes": round(wall, 3),
        "torch_threads": torch.get_num_threads(),
        "epochs": probe.records,
    }
    common.write_json(Path(args.out), result)
    if reached is None:
        print(f"test accuracy never reached {args.target} in {trainer.epoch} epochs "
              f"(best {max(r['test_accuracy'] for r in probe.records):.4f})")
    else:
        print(f"test accuracy >= {args.target} first after epoch {reached}: {record['train_seconds']:.1f}s of training")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
