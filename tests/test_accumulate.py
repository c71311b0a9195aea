"""train.accumulate: one optimizer step every N batches on the gradient of their mean loss."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import deepworks
from deepworks import Callback, Trainer
from deepworks.errors import ConfigError


def blobs(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(3, 8, generator=g)[y] * 2 + torch.randn(n, 8, generator=g)
    return x, y


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))


BASE = {"epochs": 2, "progress": "none", "precision": "fp32", "optimizer": {"name": "sgd", "lr": 0.1},
        "schedule": {"name": "cosine"}, "warmup_steps": 1, "l2": 0.01}


def test_four_batches_of_32_accumulated_equal_one_batch_of_128():
    """The oracle: the same run at batch 128. 240 samples make groups of 128 and 112 (the last
    micro-batch holds 16), so the batches' shares, the schedule's steps (cosine with warm-up: it
    would end elsewhere if it counted batches) and the L2 penalty must all be per optimizer step."""
    x, y = blobs()
    big, small = mlp(), mlp()
    Trainer(big, {**BASE, "batch_size": 128}).fit((x, y))
    trainer = Trainer(small, {**BASE, "batch_size": 32, "accumulate": 4})
    trainer.fit((x, y))
    assert (trainer.batches_per_epoch, trainer.steps_per_epoch, trainer.global_step) == (8, 2, 4)
    for a, b in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # without accumulation, batch 32 takes 8 steps an epoch and ends elsewhere
    plain = mlp()
    Trainer(plain, {**BASE, "batch_size": 32}).fit((x, y))
    assert max((a - b).abs().max().item() for a, b in zip(big.parameters(), plain.parameters())) > 1e-3


class StopAt(Callback):
    def __init__(self, batches):
        self.batches, self.seen = batches, 0

    def on_batch_end(self, trainer, step):
        self.seen += 1
        if self.seen == self.batches:
            raise KeyboardInterrupt


@pytest.mark.parametrize("crash_after", [6, 11])  # inside an accumulation group, and inside the second epoch
def test_an_accumulating_run_killed_mid_epoch_resumes_bitwise(tmp_path, crash_after):
    x, y = blobs()
    cfg = {**BASE, "epochs": 3, "batch_size": 32, "accumulate": 3, "checkpoint_every_steps": 1}
    Trainer(mlp(), cfg, run_dir=tmp_path / "full").fit((x, y), (x[:60], y[:60]))
    with pytest.raises(KeyboardInterrupt):
        Trainer(mlp(), cfg, run_dir=tmp_path / "crash", callbacks=[StopAt(crash_after)]).fit((x, y), (x[:60], y[:60]))
    Trainer(mlp(seed=5), cfg, run_dir=tmp_path / "crash").fit((x, y), (x[:60], y[:60]), resume=True)
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "crash" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_accumulate_is_refused_where_it_cannot_mean_anything():
    with pytest.raises(ConfigError, match=r"train\.accumulate"):
        deepworks.load_config({"data": {"dataset": "digits"}, "train": {"accumulate": 0}})
    x, y = blobs(60)
    with pytest.raises(ConfigError, match=r"train\.accumulate: 2 with train\.optimizer: lbfgs.*Fix"):
        Trainer(mlp(), {"progress": "none", "accumulate": 2, "optimizer": {"name": "lbfgs"}}).fit((x, y))
