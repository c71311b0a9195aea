"""Fine-tuning a pretrained Hugging Face text encoder (``model.name: transformer``) on a tiny,
randomly initialised BERT written to a folder with its WordPiece tokenizer: Hugging Face's own
sequence classifier as the oracle of the model, padding that changes nothing, a bitwise resume
after a kill, ONNX Runtime fed by the saved tokenizer, the server against predict, the transfer
section's freezing and learning rates, and the refusals of bad encoders and lengths."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import deepworks
from cli_in_process import refused
from deepworks.config import load_config
from deepworks.errors import ConfigError
from test_serve import wait_ready
from sentiment import SENTIMENT_WORDS as FILLER, sentiment_csv

transformers = pytest.importorskip("transformers")

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted({*FILLER, "good", "bad"}), "##s", "!", "."]
POSITIONS = 40  # the tiny encoder's position embeddings
MAX_LENGTH = 10  # some of the texts (up to 11 tokens with [CLS] and [SEP]) are cut


def tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) and a WordPiece tokenizer over WORDS, saved
    as a Hugging Face model folder."""
    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=POSITIONS)
    BertModel(config).save_pretrained(folder)
    BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text-transformer")
    return {"bert": tiny_bert(folder / "bert"), "csv": sentiment_csv(folder / "reviews.csv", n=120),
            "root": folder}


def config(files, **model) -> dict:
    return {
        "seed": 0,
        "data": {"path": str(files["csv"]), "text": "review", "target": "sentiment", "on_duplicates": "keep"},
        "model": {"name": "transformer", "encoder": str(files["bert"]), "pooling": "mean", "max_length": MAX_LENGTH,
                  **model},
        # a constant rate, no warm-up and no early stopping: the tiny encoder's settings, not the fine-tuning
        # defaults of model.name: transformer (tests/test_text_defaults.py checks those)
        "train": {"epochs": 2, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 3e-3}, "precision": "fp32",
                  "schedule": "constant", "warmup": None, "early_stopping": None,
                  "checkpoint_every_steps": 2, "progress": "log"},
    }


@pytest.fixture(scope="module")
def trained(files, train_by_cli):
    """The run of :func:`config`, trained once by `deepworks train` (with its report), and its YAML."""
    path = files["root"] / "config.yaml"
    path.write_text(yaml.safe_dump(config(files)))
    return path, train_by_cli(path, run_dir=files["root"] / "run")


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def test_logits_equal_hugging_face_for_cls_and_mean_pooling(files):
    """cls: the head on BERT's pooler, which is what AutoModelForSequenceClassification computes
    (same encoder weights, its classifier given our head's); mean: the head on the mean of the
    last hidden states of BertModel run on each text alone, unpadded."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    texts = ["the film was good", "bad", "a story and a cast and music and the ending", ""]
    tok = _tokenizer(files["bert"])
    batch = tok(texts, padding=True, return_tensors="pt")
    for pooling in ("cls", "mean"):
        ours = deepworks.create_model("transformer", input_shape=(16,), num_classes=3, encoder=str(files["bert"]),
                                      pooling=pooling, max_length=16, vocab_size=len(WORDS))
        ours.load_pretrained()
        ours.eval()
        with torch.no_grad():
            got = ours(batch["input_ids"])
            if pooling == "cls":
                oracle = AutoModelForSequenceClassification.from_pretrained(str(files["bert"]), num_labels=3).eval()
                oracle.classifier.load_state_dict(ours.head.state_dict())
                want = oracle(**batch).logits
            else:
                bert = AutoModel.from_pretrained(str(files["bert"])).eval()
                pooled = [bert(**tok([t], return_tensors="pt")).last_hidden_state[0].mean(0) for t in texts]
                want = ours.head(torch.stack(pooled))
        assert got.shape == (4, 3)
        assert torch.allclose(got, want, atol=1e-5, rtol=0), (pooling, (got - want).abs().max())


def test_half_precision_weights_train_as_float32(files, tmp_path):
    """Weights published in float16 (as many Hub models are) load into a float32 model, each value
    the file's value exactly."""
    from transformers import AutoModel

    folder = tmp_path / "half"
    AutoModel.from_pretrained(str(files["bert"])).half().save_pretrained(folder)
    shutil.copy(files["bert"] / "tokenizer.json", folder)
    shutil.copy(files["bert"] / "tokenizer_config.json", folder)
    model = deepworks.create_model("transformer", input_shape=(8,), num_classes=2, encoder=str(folder), max_length=8,
                                   vocab_size=len(WORDS))
    model.load_pretrained()
    saved = load_file(folder / "model.safetensors")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.equal(v.float(), model.encoder.state_dict()[k]) for k, v in saved.items())


def test_training_records_the_weights_tokenizer_and_cut_texts(trained, files):
    path, cli_run = trained
    run = cli_run.run
    info = json.loads((run.dir / "data.json").read_text())
    assert info["kind"] == "subwords" and info["input_shape"] == [MAX_LENGTH]
    import hashlib

    sha = hashlib.sha256((files["bert"] / "model.safetensors").read_bytes()).hexdigest()
    assert info["input"]["encoder"]["sha256"] == sha
    assert run.summary["transfer"]["weights"]["sha256"] == sha
    # the tokenizer in the run is the encoder's: the same ids for the same texts
    tok, saved = _tokenizer(files["bert"]), _tokenizer(run.dir / "tokenizer")
    texts = ["the good film!", "bad acting", ""]
    assert saved(texts)["input_ids"] == tok(texts)["input_ids"]
    # cut texts counted independently: the training split's texts that the tokenizer makes longer than max_length
    train_texts = deepworks.pipeline.prepare_data(run.config).raw["train"]
    cut = sum(len(ids) > MAX_LENGTH for ids in tok(train_texts)["input_ids"])
    assert 0 < cut < len(train_texts)
    assert info["tokens"]["train"]["truncated"] == cut
    assert f"{cut} of {len(train_texts)} training texts were cut at model.max_length = {MAX_LENGTH}" in cli_run.printed
    report = (run.dir / "report.html").read_text()
    assert "pretrained encoder" in report and sha in report
    assert run.summary["test"]["accuracy"] > 0.5  # it learns the one word that decides the label


def test_a_text_alone_equals_the_text_in_a_padded_batch(trained):
    from deepworks import Predictor

    p = Predictor(trained[1].run.dir, progress=False)
    text = "good film"
    alone = p.forward(p.inputs.encode([text]))
    batch = p.inputs.encode([text, "the plot and the story and the cast and the music was bad", ""])
    assert p.inputs.to_model(batch).shape[1] > p.inputs.to_model(p.inputs.encode([text])).shape[1]  # padded
    mixed = p.forward(batch)
    assert torch.allclose(alone[0], mixed[0], atol=1e-5, rtol=0)
    # a special token's string in a text is text: only the padding on the right has the pad id
    ids = p.inputs.encode(["good [PAD] film [SEP]"])[0]
    assert ids[: int((ids != p.inputs.pad_id).sum())].ne(p.inputs.pad_id).all()
    # predict answers with the same numbers whatever the company of a text
    single = deepworks.predict(trained[1].run.dir, texts=[text], top_k=2)[0]
    many = deepworks.predict(trained[1].run.dir, texts=["bad", text, ""], top_k=2)[1]
    assert single["top_k"][0]["probability"] == pytest.approx(many["top_k"][0]["probability"], abs=1e-5)


def test_kill_mid_epoch_and_resume_is_bitwise(trained, tmp_path, paused_mid_epoch):
    path, cli_run = trained
    killed = tmp_path / "killed"
    proc = paused_mid_epoch(path, killed, "train.progress=none", "report=false")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    deepworks.resume(killed)
    for name in ("model.safetensors", "checkpoints/last.safetensors"):
        a, b = load_file(cli_run.run.dir / name), load_file(killed / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert json.loads((killed / "summary.json").read_text())["test"] == cli_run.run.summary["test"]


def test_export_parity_and_onnx_runtime_fed_by_the_saved_tokenizer(trained, tmp_path):
    import onnxruntime as ort

    from deepworks.exporting import export

    run_dir = tmp_path / "run"
    shutil.copytree(trained[1].run.dir, run_dir)
    sidecar = export(run_dir)
    assert sidecar["input"]["shape"] == ["batch", "length"] and sidecar["input"]["dtype"] == "int64"
    assert set(sidecar["parity"]["batches"]) == {"1", "7", "padding"}
    assert sidecar["parity"]["max_abs_diff"] <= 1e-4
    # the graph fed as the sidecar says: the run's tokenizer, padded to the batch's longest text
    texts = ["good", "the acting and the plot and the music and the story was bad", "", "a fine cast"]
    tok = _tokenizer(run_dir / sidecar["preprocessing"]["tokenizer"]["folder"])
    ids = tok(texts, truncation=True, max_length=sidecar["preprocessing"]["max_length"], padding="longest",
              split_special_tokens=True, return_tensors="np")["input_ids"].astype(np.int64)
    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"token_ids": ids})[0]
    want = deepworks.Predictor(run_dir, progress=False).predict_proba(texts)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    assert np.abs(probs / probs.sum(1, keepdims=True) - want).max() <= 1e-4
    # the server's ONNX backend feeds the same graph each batch cut to its longest text
    from fastapi.testclient import TestClient

    from deepworks.serve import create_app

    with TestClient(create_app(run_dir, backend="onnx")) as client:
        wait_ready(client)
        r = client.post("/predict?top_k=2", json={"texts": texts})
        assert r.status_code == 200, r.text
        for got, row in zip(r.json()["results"], want):
            served = {p["label"]: p["probability"] for p in got["predictions"]}
            assert max(abs(served[c] - row[i]) for i, c in enumerate(trained[1].run.classes)) <= 1e-4


def test_served_texts_equal_predict_from_the_run_alone(trained, tmp_path):
    """The run's directory is all predict and serve need: a copy whose config names an encoder
    folder that no longer exists answers as the original does."""
    from fastapi.testclient import TestClient

    from deepworks.serve import create_app

    run_dir = tmp_path / "run"
    shutil.copytree(trained[1].run.dir, run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["model"]["encoder"] = str(tmp_path / "moved-away")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    texts = ["a good film", "bad", "", "the plot and the story and the cast and the music and the acting was good"]
    want = deepworks.predict(run_dir, texts=texts, top_k=2)
    assert want == deepworks.predict(trained[1].run.dir, texts=texts, top_k=2)
    with TestClient(create_app(run_dir)) as client:
        wait_ready(client)
        for body in ({"texts": texts}, {"texts": texts[:1]}):
            r = client.post("/predict?top_k=2", json=body)
            assert r.status_code == 200, r.text
            for got, w in zip(r.json()["results"], want):
                assert [p["label"] for p in got["predictions"]] == [p["class"] for p in w["top_k"]]
                for p, q in zip(got["predictions"], w["top_k"]):
                    assert p["probability"] == pytest.approx(q["probability"], abs=1e-5)


def test_transfer_freezes_the_encoder_for_warmup_then_decays_lr_by_layer(files):
    """warmup_epochs: 1 keeps every encoder weight as loaded through epoch 1 (the head learns);
    from epoch 2 the encoder learns, its layers at backbone_lr_scale x layer_decay^depth."""
    from deepworks.kinds import new_model
    from deepworks.pipeline import prepare_data
    from deepworks.training import Callback, Trainer
    from deepworks.transfer import TransferStages

    cfg = load_config({**config(files), "transfer": {
        "mode": "fine_tune", "warmup_epochs": 1, "backbone_lr_scale": 0.5, "layer_decay": 0.5}})
    data = prepare_data(cfg)
    model = new_model(cfg, data.input_shape, data.task, data.info)
    blocks = [name for name, _ in model.blocks]
    assert blocks == ["encoder.embeddings", "encoder.encoder.layer.0", "encoder.encoder.layer.1"]  # mean: no pooler
    loaded = {k: v.clone() for k, v in model.model.encoder.state_dict().items()}
    head = model.model.head.weight.detach().clone()
    seen = {}

    class Snapshot(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            seen[epoch] = {k: v.clone() for k, v in model.model.encoder.state_dict().items()}
            seen[f"head{epoch}"] = model.model.head.weight.detach().clone()

    trainer = Trainer(model, {**cfg.train.model_dump(), "checkpoint_every_steps": None, "progress": "none"},
                      task=data.task, callbacks=[TransferStages(model), Snapshot()])
    trainer.fit(data.train)
    scales = [g["lr_scale"] for g in trainer.optimizer.param_groups]
    assert scales == [1.0, 0.5, 0.25, 0.125]  # head, layer.1, layer.0, embeddings
    assert all(torch.equal(seen[1][k], loaded[k]) for k in loaded)  # warm-up: the encoder as loaded
    assert not torch.equal(seen["head1"], head)  # while the head learns
    assert any(not torch.equal(seen[2][k], loaded[k]) for k in loaded)  # then the encoder learns too


@pytest.mark.parametrize("case", ["not_text", "no_config", "offline_name", "max_length"])
def test_bad_encoders_and_lengths_are_one_line_errors(case, files, tmp_path, capsys, monkeypatch):
    cfg = config(files)
    if case == "not_text":  # an image model's folder
        from transformers import ViTConfig, ViTModel

        folder = tmp_path / "vit"
        ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                           image_size=8, patch_size=4)).save_pretrained(folder)
        cfg["model"]["encoder"], needles = str(folder), ("model.encoder", "not a text encoder")
    elif case == "no_config":  # a folder of something else (a deepworks run, say)
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "model.safetensors").write_bytes(b"")
        cfg["model"]["encoder"], needles = str(tmp_path / "run"), ("model.encoder", "no config.json")
    elif case == "offline_name":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        cfg["model"]["encoder"] = "deepworks-tests/no-such-encoder"
        needles = ("model.encoder", "not in the local Hugging Face cache", "hf download deepworks-tests/no-such-encoder")
    else:
        cfg["model"]["max_length"] = POSITIONS + 1
        needles = ("model.max_length", f"above the {POSITIONS} positions", f"model.max_length: {POSITIONS} or less")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()  # the progress bars of writing the folders above
    refused(["train", path, "--run-dir", tmp_path / "out"], capsys, *needles, one_line=True)
    assert not (tmp_path / "out" / "config.yaml").exists()


def test_own_vocabulary_keys_and_pretrained_flags_are_refused(files, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.max_length .*model\.max_length"):
        deepworks.train({**config(files), "data": {**config(files)["data"], "max_length": 64}}, run_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match=r"model\.weights: .*model\.encoder"):
        deepworks.train({**config(files), "model": {**config(files)["model"], "weights": "x.safetensors"}},
                        run_dir=tmp_path / "b")
    assert not list(tmp_path.iterdir())


def test_regression_on_texts_predicts_in_the_targets_units(files, tmp_path):
    """data.task: regression: one output, the standardised target; the score of a text is how many
    times it says good (plus noise), which the fine-tuned encoder learns well beyond the training mean."""
    import csv

    rng = np.random.default_rng(1)
    rows = [["review", "score"]]
    for _ in range(120):
        k = int(rng.integers(0, 4))
        words = list(rng.choice(FILLER, size=int(rng.integers(2, 5)))) + ["good"] * k
        rng.shuffle(words)
        rows.append([" ".join(words), f"{10 * k + rng.normal(0, 1):.3f}"])
    path = tmp_path / "scores.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    cfg = config(files, pooling="mean", max_length=12)
    cfg["data"] = {"path": str(path), "text": "review", "target": "score", "task": "regression", "on_duplicates": "keep"}
    cfg["train"].update(epochs=4, checkpoint_every_steps=None, progress="none")
    run = deepworks.train({**cfg, "report": False}, run_dir=tmp_path / "run")
    assert run.task.name == "regression"
    test = run.summary["test"]
    assert test["r2"] > 0.5 and test["r2"] > run.summary["baselines"]["training_mean"]["test"]["r2"] + 0.5
    assert "tfidf_ridge" in run.summary["baselines"]
    p = deepworks.Predictor(run.dir, progress=False)
    texts = ["good good good film", "the plot"]
    outputs = p.forward(p.inputs.encode(texts))  # standardised
    got = [r["prediction"] for r in p.predict(texts)]
    std, mean = run.task.std[0], run.task.mean[0]
    assert got == pytest.approx((outputs[:, 0] * std + mean).tolist(), abs=1e-4)
    assert got[0] > got[1] + 10  # three goods against none: about 30 against 0


def test_inspect_shows_the_frozen_encoder_and_the_learning_head(files):
    from deepworks.inspection import inspect_config

    out = inspect_config({**config(files), "transfer": {"mode": "feature_extraction"}})
    head = 32 * 2 + 2  # hidden 32 -> 2 classes
    assert out["model"] == "transformer" and out["trainable_params"] == head
    assert out["frozen_params"] > 0 and out["transfer"]["tuned_blocks"] == []
    assert out["transfer"]["frozen_blocks"] == ["encoder.embeddings", "encoder.encoder.layer.0", "encoder.encoder.layer.1"]


def test_cached_features_of_texts_stay_with_their_texts(files):
    """transfer.mode: feature_extraction computes the frozen encoder's pooled vector of each text once;
    the texts are visited shortest first, and each vector must come back to its own text and label
    (it did not: the head trained on shuffled features and validated at chance)."""
    from deepworks.kinds import new_model, prepare_data
    from deepworks.runtime import Precision
    from deepworks.transfer import cache_features

    cfg = load_config({**config(files), "transfer": {"mode": "feature_extraction"}})
    data = prepare_data(cfg)
    assert len(set(data.train.lengths.tolist())) > 2  # texts of several lengths: a sorted visit reorders them
    model = new_model(cfg, data.input_shape, data.task, data.info)
    cached = cache_features(model, data.train, batch_size=8, device=torch.device("cpu"),
                            precision=Precision("fp32", "cpu", False))
    one_by_one: list[torch.Tensor] = []
    model.eval()
    hook = model.head[0].register_forward_pre_hook(lambda _m, args: one_by_one.append(args[0].detach()))
    with torch.no_grad():
        for i in range(len(data.train)):
            model(data.train.x[i:i + 1])
    hook.remove()
    assert torch.allclose(cached.x, torch.cat(one_by_one), atol=1e-5)
    assert torch.equal(cached.y, data.train.y)
