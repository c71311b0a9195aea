"""data.bucket_by_length: training batches of texts of similar length, still a seeded shuffle."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import deepworks
from deepworks.data.loaders import TensorData, iterate_batches
from deepworks.errors import ConfigError
from deepworks.pipeline import prepare_data

from sentiment import SENTIMENT_LSTM as CONFIG
from sentiment import sentiment_csv


def lengths_data(n=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 65, (n,), generator=g)
    x = (torch.arange(64)[None, :] < lengths[:, None]).long() * torch.arange(1, n + 1)[:, None]  # ids = sample + 1
    return TensorData(x, torch.arange(n) % 2, lengths=lengths)


def epoch(data, e, seed=0, **kw):
    return [xb[:, 0] - 1 for xb, _ in iterate_batches(data, 16, shuffle=True, seed=seed, epoch=e, **kw)]


def test_bucketed_epochs_cover_every_sample_once_and_depend_only_on_seed_and_epoch():
    data = lengths_data()
    first = epoch(data, 1)
    samples = torch.cat(first)
    assert torch.equal(samples.sort().values, torch.arange(1000))  # every sample once
    assert all(torch.equal(a, b) for a, b in zip(first, epoch(lengths_data(), 1)))  # (seed, epoch) decides
    assert not torch.equal(samples, torch.cat(epoch(data, 2)))
    assert not torch.equal(samples, torch.cat(epoch(data, 1, seed=1)))
    # batches of similar length: each batch's spread of lengths is a fraction of a random batch's
    spread = lambda batches: torch.stack([data.lengths[b].max() - data.lengths[b].min() for b in batches[:-1]]).float().mean()  # noqa: E731
    plain = TensorData(data.x, data.y)
    assert spread(first) < 0.2 * spread(epoch(plain, 1))
    # which samples meet in a batch changes from epoch to epoch (a shuffle, not a fixed sort)
    together = lambda batches: {frozenset(b.tolist()) for b in batches}  # noqa: E731
    assert len(together(first) & together(epoch(data, 2))) < len(first) // 10
    # a resumed epoch skips exactly the batches it trained on
    rest = epoch(data, 1, start_batch=7)
    assert all(torch.equal(a, b) for a, b in zip(first[7:], rest)) and len(rest) == len(first) - 7
    # processes: disjoint shards, the same number of steps, each step's samples alike across them
    shards = [epoch(data, 1, rank=r, world_size=2) for r in (0, 1)]
    a, b = torch.cat(shards[0]), torch.cat(shards[1])
    assert len(shards[0]) == len(shards[1]) and not set(a.tolist()) & set(b.tolist()) and len(a) + len(b) == 1000
    step = lambda k: torch.cat([shards[0][k], shards[1][k]])  # noqa: E731
    assert torch.stack([data.lengths[step(k)].max() - data.lengths[step(k)].min() for k in range(30)]).float().mean() < 8


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bucket")
    return sentiment_csv(folder / "reviews.csv", n=120)


def test_lstm_text_runs_bucket_by_default_and_a_killed_run_resumes_bitwise(reviews, tmp_path, paused_mid_epoch):
    config = {**CONFIG, "data": {**CONFIG["data"], "path": str(reviews)},
              "train": {**CONFIG["train"], "epochs": 2, "checkpoint_every_steps": 2}, "report": False}
    data = prepare_data(deepworks.load_config(config))
    assert data.train.lengths is not None and torch.equal(data.train.lengths, (data.train.x != 0).sum(1))
    off = prepare_data(deepworks.load_config({**config, "data": {**config["data"], "bucket_by_length": False}}))
    assert off.train.lengths is None
    full = deepworks.train(config, run_dir=tmp_path / "full")
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = paused_mid_epoch(path, tmp_path / "crash")
    proc.kill()
    proc.wait()
    deepworks.resume(tmp_path / "crash")
    a, b = load_file(full.dir / "model.safetensors"), load_file(tmp_path / "crash" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("data", [{"dataset": "digits"}, {"dataset": "rotten-tomatoes", "encoder": "all-MiniLM-L6-v2"}])
def test_bucketing_data_without_token_sequences_is_refused_in_one_line(data):
    with pytest.raises(ConfigError, match=r"data\.bucket_by_length .*Fix: remove data\.bucket_by_length"):
        deepworks.load_config({"data": {**data, "bucket_by_length": True}})


def test_evaluation_visits_sequences_by_length_and_keeps_outputs_in_the_stored_order():
    data = lengths_data(n=300, seed=3)
    visited = torch.cat([xb[:, 0] - 1 for xb, _ in iterate_batches(data, 16, shuffle=False)])
    assert torch.equal(visited.sort().values, torch.arange(300))  # every sample once
    assert torch.all(data.lengths[visited].diff() >= 0)  # shortest first: batches of similar length
    torch.manual_seed(0)
    model = deepworks.create_model("lstm", input_shape=(64,), num_classes=2, vocab_size=301, embedding=8, hidden=8)
    trainer = deepworks.Trainer(model, {"progress": "none", "precision": "fp32"})
    trainer.evaluate(data, keep="sorted")
    trainer.evaluate(TensorData(data.x, data.y), keep="stored")
    (sorted_out, sorted_y), (stored_out, stored_y) = trainer.outputs["sorted"], trainer.outputs["stored"]
    assert torch.equal(sorted_y, data.y) and torch.equal(stored_y, data.y)
    torch.testing.assert_close(sorted_out, stored_out, rtol=1e-5, atol=1e-5)  # sample i's output is row i
