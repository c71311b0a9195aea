"""Trainer: the user's own nn.Module and data get the loop, checkpoints and exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import accuracy_score
from torch import nn
from torch.utils.data import Dataset

from deepworks import Callback, Trainer
from deepworks.data.loaders import TensorData, iterate_batches
from deepworks.errors import CheckpointError, ConfigError, DataError, ShapeError


def blobs(n=240, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centers = torch.randn(classes, 2, 4, 4, generator=g) * 2
    x = centers[y] + torch.randn(n, 2, 4, 4, generator=g)
    return x, y


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


def test_fit_learns_and_writes_a_run_directory(tmp_path):
    x, y = blobs(n=300)
    train, val = (x[:240], y[:240]), (x[240:], y[240:])  # validation rows the model never trains on
    trainer = Trainer(small_model(), {"epochs": 5, "progress": "none", "optimizer": {"name": "adamw", "lr": 0.01}},
                      run_dir=tmp_path / "run")
    history = trainer.fit(train, val)
    assert len(history) == 5
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4, 5]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs_run"] == 5
    assert {"torch", "python"} <= set(summary["versions"])
    # the oracle: a plain forward pass of the saved weights over the held-out rows, scored by scikit-learn
    ref = small_model(seed=1)
    ref.load_state_dict(load_file(tmp_path / "run" / "model.safetensors"))
    ref.eval()
    with torch.no_grad():
        logits = ref(val[0])
    accuracy = accuracy_score(val[1].numpy(), logits.argmax(1).numpy())
    assert summary["val"]["accuracy"] == pytest.approx(accuracy, abs=1e-12) and accuracy > 0.9
    assert summary["val"]["loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, val[1])), rel=1e-5)
    assert summary["val"]["support"] == 60


def test_dataset_path_gives_same_result_as_tensor_path():
    x, y = blobs()

    class Pairs(Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i], int(y[i])

    a = small_model()
    Trainer(a, {"epochs": 2, "progress": "none", "batch_size": 32}).fit((x, y))
    b = small_model()
    Trainer(b, {"epochs": 2, "progress": "none", "batch_size": 32}).fit(Pairs())
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)


def hand_order(epoch, n):
    """The hand loop's own batch order: a permutation from its own generator, one seed per epoch."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(1000 + epoch))


def test_matches_a_plain_pytorch_loop():
    """The oracle: a hand-written PyTorch loop (torch.optim.SGD, cross_entropy, its own batch order
    from its own torch.Generator). The Trainer given that order (Trainer(order=...)), the same
    initial weights and the same global seed ends with bitwise the same weights, dropout
    included."""
    x, y = blobs()
    ours = small_model()
    Trainer(ours, {"epochs": 2, "batch_size": 50, "progress": "none", "precision": "fp32",
                   "optimizer": {"name": "sgd", "lr": 0.05}}, order=hand_order).fit((x, y))

    ref = small_model()
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(0)  # Trainer(seed=0) seeds the global generator (dropout) before training
    ref.train()
    for epoch in (1, 2):
        order = hand_order(epoch, len(x))
        for s in range(0, len(x), 50):
            idx = order[s : s + 50]
            opt.zero_grad()
            nn.functional.cross_entropy(ref(x[idx]), y[idx]).backward()
            opt.step()
    for pa, pb in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    # the order matters: the Trainer's own shuffle ends elsewhere
    default = small_model()
    Trainer(default, {"epochs": 2, "batch_size": 50, "progress": "none", "precision": "fp32",
                      "optimizer": {"name": "sgd", "lr": 0.05}}).fit((x, y))
    assert any(not torch.equal(pa, pb) for pa, pb in zip(default.parameters(), ref.parameters()))
    # which reshuffles every epoch: each epoch's samples are all of them, once, in a new order
    ids = TensorData(torch.arange(len(x)), y)
    seen = [torch.cat([xb for xb, _ in iterate_batches(ids, 50, shuffle=True, seed=0, epoch=e)]) for e in (1, 2)]
    assert all(torch.equal(s.sort().values, torch.arange(len(x))) for s in seen)
    assert not torch.equal(seen[0], seen[1])


def test_a_given_order_resumes_exactly_and_a_bad_one_is_refused(tmp_path):
    x, y = blobs()
    cfg = {"epochs": 3, "batch_size": 32, "progress": "none", "checkpoint_every_steps": 3}
    Trainer(small_model(), cfg, run_dir=tmp_path / "full", order=hand_order).fit((x, y))
    with pytest.raises(KeyboardInterrupt):
        Trainer(small_model(), cfg, run_dir=tmp_path / "crash", order=hand_order,
                callbacks=[StopAt(12)]).fit((x, y))  # mid-epoch 2, after a step checkpoint
    Trainer(small_model(seed=123), cfg, run_dir=tmp_path / "crash", order=hand_order).fit((x, y), resume=True)
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "crash" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(DataError, match=r"must lie in 0\.\.239"):
        Trainer(small_model(), {"epochs": 1, "progress": "none"}, order=lambda e, n: torch.arange(n) + 1).fit((x, y))
    with pytest.raises(DataError, match="integer sample indices"):
        Trainer(small_model(), {"epochs": 1, "progress": "none"}, order=lambda e, n: torch.rand(n)).fit((x, y))


def test_early_stopping_stops_and_keeps_best(tmp_path):
    x, y = blobs()
    noise = torch.randint(0, 3, (60,))  # validation labels the model cannot learn
    trainer = Trainer(
        small_model(), {"epochs": 50, "progress": "none", "monitor": "val_loss",
                        "early_stopping": {"monitor": "val_loss", "patience": 2}}, run_dir=tmp_path / "r",
    )
    history = trainer.fit((x, y), (x[:60], noise))
    assert len(history) < 50
    best = min(h["val_loss"] for h in history)
    assert trainer.best == pytest.approx(best)
    # the model handed back is the best one, not the last one
    weights = load_file(tmp_path / "r" / "model.safetensors")
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, weights[k])


class StopAt(Callback):
    """Simulates a crash right after a given step (after its checkpoint was written)."""

    def __init__(self, step):
        self.step = step

    def on_batch_end(self, trainer, step):
        if step == self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("crash_step", [7, 12, 20])  # mid-epoch (after a step checkpoint), and at other points
def test_resume_is_bitwise_equal_to_uninterrupted(tmp_path, crash_step):
    x, y = blobs()
    cfg = {"epochs": 4, "batch_size": 32, "progress": "none", "checkpoint_every_steps": 3,
           "early_stopping": {"monitor": "val_loss", "patience": 10}}
    full = Trainer(small_model(), cfg, run_dir=tmp_path / "full")
    full.fit((x, y), (x[:60], y[:60]))

    crashed = Trainer(small_model(), cfg, run_dir=tmp_path / "crash", callbacks=[StopAt(crash_step)])
    with pytest.raises(KeyboardInterrupt):
        crashed.fit((x, y), (x[:60], y[:60]))
    resumed = Trainer(small_model(seed=123), cfg, run_dir=tmp_path / "crash")  # different init: weights come from the checkpoint
    resumed.fit((x, y), (x[:60], y[:60]), resume=True)

    for name in ("model.safetensors", "checkpoints/last.safetensors"):
        a, b = load_file(tmp_path / "full" / name), load_file(tmp_path / "crash" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k}"
    assert (tmp_path / "full" / "metrics.jsonl").read_text().count("\n") == 4
    ra = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(l) for l in (tmp_path / "crash" / "metrics.jsonl").read_text().splitlines()]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(ra) == strip(rb)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    x, y = blobs()
    with pytest.raises(CheckpointError) as e:
        Trainer(small_model(), {"progress": "none"}, run_dir=tmp_path / "empty").fit((x, y), resume=True)
    assert "no checkpoint" in str(e.value)


def test_wrong_shapes_and_labels_are_user_errors():
    x, y = blobs()
    with pytest.raises(ShapeError) as e:
        Trainer(small_model(), {"progress": "none"}).fit((x[:, :1], y))
    assert "does not fit the model" in str(e.value)
    with pytest.raises(ShapeError) as e:
        Trainer(small_model(), {"progress": "none"}).fit((x, y + 5))
    assert "labels" in str(e.value)
    with pytest.raises(DataError):
        Trainer(small_model(), {"progress": "none"}).fit((x, y[:10]))
    with pytest.raises(DataError):
        Trainer(small_model(), {"progress": "none"}).fit((x, y.float()))


def test_bad_trainer_config_names_the_key():
    with pytest.raises(ConfigError) as e:
        Trainer(small_model(), {"epoch": 3})
    assert "train.epoch" in str(e.value) and "'train.epochs'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        Trainer(small_model(), {"optimizer": {"name": "sgd", "lrr": 0.1}})
    assert "train.optimizer.lrr" in str(e.value)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_every_precision_trains_a_cnn(precision):
    from deepworks.models import create_model

    x, y = blobs(n=96)
    torch.manual_seed(0)
    model = create_model("cnn", input_shape=(2, 4, 4), num_classes=3, filters=[8], hidden=[16])
    trainer = Trainer(model, {"epochs": 3, "progress": "none", "precision": precision,
                              "optimizer": {"name": "adamw", "lr": 0.01}})
    history = trainer.fit((x, y), (x, y))
    assert trainer.precision.name == precision
    assert trainer.precision.channels_last == (precision != "fp32")  # auto layout goes with reduced precision
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert (trainer.scaler is not None) == (precision == "fp16")


def test_auto_precision_follows_the_hardware(monkeypatch):
    import deepworks.runtime as rt

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    monkeypatch.setattr(rt, "cpu_supports_bf16", lambda: False)
    assert rt.resolve_precision("auto", torch.device("cpu"), model).name == "fp32"
    monkeypatch.setattr(rt, "cpu_supports_bf16", lambda: True)
    p = rt.resolve_precision("auto", torch.device("cpu"), model)
    assert p.name == "bf16" and p.channels_last
    assert not rt.resolve_precision("bf16", torch.device("cpu"), model, channels_last="off").channels_last
    assert not rt.resolve_precision("bf16", torch.device("cpu"), nn.Linear(2, 2)).channels_last  # no convs
    assert rt.resolve_precision("auto", torch.device("cpu"), nn.Linear(2, 2)).name == "fp32"  # dense: no gain on CPUs


def test_bf16_autocast_matches_fp32_closely():
    """bf16 is an approximation: the logits stay within bf16's precision of the fp32 ones."""
    from deepworks.runtime import Precision
    from deepworks.training.step import eval_step

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(128, 3)).eval()
    x, y = blobs(n=32)
    _, ref = eval_step(model, x, y, nn.CrossEntropyLoss())
    _, low = eval_step(model, x, y, nn.CrossEntropyLoss(), Precision("bf16", "cpu", channels_last=True))
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, ref, atol=0.05, rtol=0.05)


def test_without_validation_data_early_stopping_watches_training():
    x, y = blobs()
    trainer = Trainer(small_model(), {"epochs": 6, "progress": "none", "early_stopping": {"patience": 2},
                                      "optimizer": {"name": "adamw", "lr": 0.01}})
    history = trainer.fit((x, y))
    assert len(history) == 6  # the training loss keeps improving, so it does not stop
    assert trainer.config.monitor == "train_accuracy"


def test_auto_eval_batch_size_shrinks_for_large_inputs():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    trainer = Trainer(model, {"progress": "none"})
    assert trainer.eval_batch_size(28 * 28) == 512  # small images: the usual 512
    assert trainer.eval_batch_size(3 * 224 * 224) == 111  # photos: about 64 MB of float32 input
    assert Trainer(model, {"batch_size": 128}).eval_batch_size(3 * 512 * 512) == 128  # never below batch_size
    assert Trainer(model, {"eval_batch_size": 1000}).eval_batch_size(3 * 224 * 224) == 1000  # a set value wins
    with pytest.raises(ConfigError, match="eval_batch_size"):
        Trainer(model, {"eval_batch_size": 0})


def test_val_every_validates_every_nth_and_the_last_epoch(tmp_path):
    x, y = blobs()
    trainer = Trainer(small_model(), {"epochs": 5, "progress": "none", "val_every": 2}, run_dir=tmp_path / "r")
    history = trainer.fit((x[:180], y[:180]), (x[180:], y[180:]))
    assert [h["epoch"] for h in history if "val_loss" in h] == [2, 4, 5]
    assert not any(h["best"] for h in history if "val_loss" not in h)  # the best model is a validated one
    validated = [h for h in history if "val_accuracy" in h]
    assert trainer.best == max(h["val_accuracy"] for h in validated)
    lines = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [("val_loss" in r) for r in lines] == [False, True, False, True, True]
    # without validation the same run takes the same steps: identical training losses
    every = Trainer(small_model(), {"epochs": 5, "progress": "none"})
    full = every.fit((x[:180], y[:180]), (x[180:], y[180:]))
    assert [h["train_loss"] for h in full] == [h["train_loss"] for h in history]


def test_early_stopping_patience_counts_validations_with_val_every():
    x, y = blobs()
    noise = torch.randint(0, 3, (60,), generator=torch.Generator().manual_seed(1))
    config = {"epochs": 40, "progress": "none", "val_every": 3, "monitor": "val_loss",
              "early_stopping": {"monitor": "val_loss", "patience": 2}}
    history = Trainer(small_model(), config).fit((x, y), (x[:60], noise))
    validated = [h["epoch"] for h in history if "val_loss" in h]
    assert validated and all(e % 3 == 0 for e in validated)
    assert history[-1]["epoch"] == validated[-1] < 40  # it stops at a validation, never in between
