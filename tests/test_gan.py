"""GANs: model shapes, the gradient penalty against hand computation, the adversarial loop's
metrics and exact resume, generate and its errors (through the CLI)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

import deepworks
from cli_in_process import refused, run as in_process
from deepworks import create_model
from deepworks.cli import main
from deepworks.errors import ConfigError, ShapeError
from deepworks.models.gan import is_adversarial, upsamplings
from deepworks.training.adversarial import AdversarialTrainer, gradient_penalty

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"latent": 8, "g_width": 8, "d_width": 8}


def digits_gan(name: str, **train) -> dict:
    return {
        "name": "g", "data": {"dataset": "digits"}, "model": {"name": name, **SMALL},
        "train": {"epochs": 2, "batch_size": 64, "progress": "none", **train}, "gan": {"quality": False},
    }


@pytest.mark.parametrize("name", ["dcgan", "cgan", "wgan-gp"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 30, 20), (1, 27, 27), (3, 64, 48)])
def test_generator_and_discriminator_shapes(name, shape):
    gan = create_model(name, input_shape=shape, num_classes=10, **SMALL)
    z, y = torch.randn(4, 8), torch.tensor([0, 3, 9, 3])
    labels = y if gan.conditional else None
    images = gan.generator(z, labels)
    assert images.shape == (4, *shape)
    assert images.min() >= -1 and images.max() <= 1  # tanh
    assert gan.discriminator(images, labels).shape == (4,)
    assert gan.conditional == (name == "cgan")


def test_depth_follows_the_image_size():
    assert [upsamplings(s, s) for s in (8, 28, 32, 27, 64)] == [1, 2, 3, 0, 4]
    gan = create_model("dcgan", input_shape=(1, 28, 28), num_classes=10, **SMALL)
    ups = [m for m in gan.generator.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(ups) == 2 and gan.generator.start == (7, 7)  # 7 -> 14 -> 28
    assert not any(isinstance(m, nn.BatchNorm2d) for m in create_model("wgan-gp", input_shape=(1, 28, 28)).discriminator.modules())
    with pytest.raises(ShapeError, match="model.depth"):
        create_model("dcgan", input_shape=(1, 28, 28), depth=3)
    assert is_adversarial("cgan") and not is_adversarial("cnn")


def test_dcgan_initialisation_is_normal_0_002():
    gan = create_model("dcgan", input_shape=(1, 28, 28), num_classes=10, latent=64, g_width=64, d_width=64)
    w = gan.generator.body[0].weight.detach()
    assert abs(float(w.mean())) < 2e-3 and abs(float(w.std()) - 0.02) < 2e-3


def test_gradient_penalty_of_a_linear_critic_is_known_in_closed_form():
    # D(x) = w . x + b has gradient w everywhere: gp = (|w| - 1)^2, whatever the images
    w = torch.tensor([2.0, -1.0, 2.0, 0.0]).view(1, 1, 2, 2)  # |w| = 3
    critic = lambda x: (x * w).sum(dim=(1, 2, 3)) + 0.5  # noqa: E731
    real, fake = torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)
    gp = gradient_penalty(critic, real, fake, torch.rand(5, 1, 1, 1))
    assert gp.item() == pytest.approx((3.0 - 1.0) ** 2)


def test_gradient_penalty_of_a_quadratic_critic_by_hand():
    # D(x) = |x|^2 / 2: gradient x_hat, so gp = mean((|x_hat| - 1)^2) with x_hat = e real + (1 - e) fake
    real = torch.tensor([[3.0, 4.0], [0.0, 0.0]]).view(2, 1, 1, 2)
    fake = torch.tensor([[0.0, 0.0], [1.0, 0.0]]).view(2, 1, 1, 2)
    eps = torch.tensor([0.5, 0.25]).view(2, 1, 1, 1)
    critic = lambda x: 0.5 * (x**2).sum(dim=(1, 2, 3))  # noqa: E731
    # x_hat = (1.5, 2) -> |.| = 2.5; (0.75, 0) -> 0.75: ((1.5)^2 + (0.25)^2) / 2
    assert gradient_penalty(critic, real, fake, eps).item() == pytest.approx((1.5**2 + 0.25**2) / 2)
    # and it trains the critic: the penalty has a gradient in the critic's weights
    lin = nn.Linear(2, 1)
    gp = gradient_penalty(lambda x: lin(x.flatten(1)).squeeze(1), real, fake, eps)
    gp.backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_ema_warms_up_then_keeps_its_decay():
    from deepworks.training.adversarial import ema_with_warmup

    avg = ema_with_warmup(0.999)
    a, c = torch.tensor([1.0]), torch.tensor([0.0])
    assert avg(a, c, torch.tensor(0)).item() == pytest.approx(0.1)  # decay 1/10 at the first update
    assert avg(a, c, torch.tensor(10_000)).item() == pytest.approx(0.999)


def test_losses_are_logged_separately(tmp_path):
    run = deepworks.train(digits_gan("wgan-gp"), run_dir=tmp_path / "w")
    records = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        assert {"g_loss", "d_loss", "d_real", "d_fake", "wasserstein", "gp", "seconds"} <= set(r)
    # n_critic 5: a generator step after every 5th critic step, counted across epochs (19 steps each)
    assert sum(r["g_steps"] for r in records) == sum(r["d_steps"] for r in records) // 5 == 7
    files = {p.relative_to(run.dir).as_posix() for p in run.dir.rglob("*") if p.is_file()}
    assert {"config.yaml", "data.json", "metrics.jsonl", "checkpoints/last.safetensors", "generator.safetensors",
            "samples/epoch-001.png", "samples/epoch-002.png", "summary.json"} <= files
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["task"] == "generation" and summary["epochs_run"] == 2 and "g_loss" in summary["final"]


class Crash(Exception):
    pass


def resumable_gan(name: str) -> dict:
    # 1257 training digits, batches of 64: 19 steps per epoch; checkpoints every 4 steps and at epoch ends
    config = digits_gan(name, ema=0.9, checkpoint_every_steps=4, epochs=3)
    config["gan"] = {"instance_noise": 0.1, "real_label": 0.9, "quality": False}
    return config


@pytest.fixture(scope="module")
def uninterrupted_gan(tmp_path_factory):
    """``uninterrupted_gan(name)``: the directory of :func:`resumable_gan`'s run for ``name``, never
    killed, trained once per module (the crash points of one model share it); read only."""
    done: dict[str, Path] = {}

    def run(name: str) -> Path:
        if name not in done:
            done[name] = tmp_path_factory.mktemp("gan-full") / name
            deepworks.train(resumable_gan(name), run_dir=done[name])
        return done[name]

    return run


@pytest.mark.parametrize("name, crash_step", [("cgan", 24), ("cgan", 19), ("wgan-gp", 12)])
def test_killed_and_resumed_run_ends_bitwise_equal(tmp_path, monkeypatch, uninterrupted_gan, name, crash_step):
    full = uninterrupted_gan(name)
    config = resumable_gan(name)

    save = AdversarialTrainer._save_checkpoint

    def save_then_crash(self):
        save(self)
        if self.global_step == crash_step:
            raise Crash  # the process dies right after this checkpoint
    monkeypatch.setattr(AdversarialTrainer, "_save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        deepworks.train(config, run_dir=tmp_path / "crash")
    monkeypatch.setattr(AdversarialTrainer, "_save_checkpoint", save)
    assert not (tmp_path / "crash" / "summary.json").exists()
    deepworks.resume(tmp_path / "crash")

    for file in ("generator.safetensors", "checkpoints/last.safetensors"):
        a, b = load_file(full / file), load_file(tmp_path / "crash" / file)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{file}: {k}"
    assert (full / "samples/epoch-003.png").read_bytes() == (tmp_path / "crash/samples/epoch-003.png").read_bytes()
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if k != "seconds"} for l in p.read_text().splitlines()]  # noqa: E731,E741
    assert strip(full / "metrics.jsonl") == strip(tmp_path / "crash/metrics.jsonl")


@pytest.fixture(scope="module")
def cgan_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("gan") / "cgan"
    deepworks.train(digits_gan("cgan", epochs=1), run_dir=path)
    return path


def test_generate_returns_tensors_and_writes_exactly_n_files(cgan_run, tmp_path):
    images = deepworks.generate(cgan_run, 7, label=3, seed=5, out=tmp_path / "out")
    assert images.shape == (7, 1, 8, 8) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == [f"sample-{i:04d}.png" for i in range(7)] + ["grid.png"] or \
        sorted(files) == sorted([f"sample-{i:04d}.png" for i in range(7)] + ["grid.png"])
    assert torch.equal(images, deepworks.generate(cgan_run, 7, label="3", seed=5))  # same seed, same images
    assert not torch.equal(images, deepworks.generate(cgan_run, 7, label=4, seed=5))  # the label matters
    with pytest.raises(ConfigError, match="--out"):
        deepworks.generate(cgan_run, 2, out=tmp_path / "out")  # already holds samples


def test_generate_errors_exit_2(cgan_run, digits_cnn_run, tmp_path, capsys):
    classifier = digits_cnn_run.dir  # the session's classifier run (tests/conftest.py), read only
    dcgan = tmp_path / "dcgan"
    deepworks.train(digits_gan("dcgan", epochs=1), run_dir=dcgan)
    cases = [
        ((classifier, "--n", 4), ["cnn run, not a GAN"]),
        ((cgan_run, "--n", 4, "--label", 10), ["--label", "0..9"]),
        ((dcgan, "--n", 4, "--label", 1), ["--label", "unconditional"]),
        ((cgan_run, "--n", 0), ["--n", "at least 1"]),
    ]
    # the CLI in this process (tests/cli_in_process.py): the exit status and the message are what is checked
    for args, needles in cases:
        refused(["generate", *args, "--out", tmp_path / "never"], capsys, *needles)
    assert not (tmp_path / "never").exists()
    code, out, err = in_process(["generate", dcgan, "--n", 3, "--seed", 1, "--out", tmp_path / "ok"], capsys)
    assert code == 0, out + err
    assert len(list((tmp_path / "ok").iterdir())) == 4


def test_gan_config_errors_name_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="gan section is for GAN models"):
        deepworks.load_config({"data": {"dataset": "digits"}, "model": {"name": "cnn"}, "gan": {"n_critic": 2}})
    with pytest.raises(ConfigError, match="gan.real_label"):
        deepworks.train(digits_gan("dcgan", label_smoothing=0.1))
    with pytest.raises(ConfigError, match="gan.n_critic"):
        deepworks.load_config({**digits_gan("wgan-gp"), "gan": {"n_critic": 0, "quality": False}})
    assert not (tmp_path / "runs").exists()  # refused before any folder was written
    cfg = deepworks.load_config(digits_gan("wgan-gp"))
    assert cfg.gan.n_critic == 5 and cfg.gan.d_optimizer.params["betas"] == [0.0, 0.9]
    assert cfg.train.optimizer.params["betas"] == [0.0, 0.9]


def test_quality_is_judged_at_the_end_and_train_prints_it(tmp_path, monkeypatch, capsys):
    # the judge: a quick classifier of the same digits (its own cache), trained once here
    monkeypatch.setenv("DEEPWORKS_DATA", str(tmp_path / "cache"))
    import deepworks.judge as judge_module

    real_judge_for = judge_module.judge_for
    monkeypatch.setattr(judge_module, "judge_for", lambda *a, **k: real_judge_for(*a, **{**k, "epochs": 3}))
    config = digits_gan("cgan", epochs=1, progress="log")  # with progress, train prints the judge's figures
    config["gan"] = {"quality_samples": 100}
    (tmp_path / "gan.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "gan.yaml"), "--run-dir", str(tmp_path / "q")]) == 0
    printed = capsys.readouterr().out
    run_dir = tmp_path / "q"
    summary = json.loads((run_dir / "summary.json").read_text())
    quality = summary["quality"]
    assert quality["samples"] == 100
    # the oracle: the run's final generator (deepworks.generate, the classes in turn, noise from
    # seed + 1) fed by hand to the judge run's saved classifier, the pixels mapped as the judge
    # was trained ((x + 1) / 2, then its data.json mean and std), counted with numpy
    samples = deepworks.generate(run_dir, 100, seed=deepworks.load_config(run_dir / "config.yaml").seed + 1)
    labels = np.arange(100) % 10
    judge_dir = Path(quality["judge"]["run"])
    judge_info = json.loads((judge_dir / "data.json").read_text())
    mean = torch.tensor(judge_info["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(judge_info["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        predicted = deepworks.load_run(judge_dir).model(((samples + 1) / 2 - mean) / std).argmax(1).numpy()
    counts = np.bincount(predicted, minlength=10)
    assert quality["class_counts"] == {str(k): int(counts[k]) for k in range(10)}
    assert quality["largest_share"] == pytest.approx(counts.max() / 100)
    agreement = {str(k): float((predicted[labels == k] == k).mean()) for k in range(10)}
    assert quality["label_agreement"]["per_label"] == pytest.approx(agreement)
    assert quality["label_agreement"]["mean"] == pytest.approx(np.mean(list(agreement.values())))
    assert quality["label_agreement"]["min"] == pytest.approx(min(agreement.values()))
    # a generator after one epoch is farther from the real digits than two halves of them are from each other
    assert quality["frechet_distance"] > quality["frechet_real_halves"] > 0
    # collapse follows its documented rule: fewer than half the classes covered, or one class over half
    covered = int(((counts >= 0.25 * 100 / 10) & (counts > 0)).sum())
    assert quality["collapse"]["collapsed"] == (covered < 5 or counts.max() / 100 > 0.5)

    # what `deepworks train` printed: the last epoch's losses as metrics.jsonl logged them, and the
    # judge's figures as counted above (entropy of the class shares in nats, by scipy)
    from scipy.stats import entropy

    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    [final] = [line for line in printed.splitlines() if line.startswith("final epoch: ")]
    shown = dict(pair.split(" ") for pair in final.removeprefix("final epoch: ").split(", "))
    assert {"g_loss", "d_loss", "d_real", "d_fake"} <= set(shown), final
    for key, value in shown.items():
        assert value == f"{summary['final'][key]:.4f}" == f"{last[key]:.4f}", (key, final)
    text = " ".join(printed.split())
    assert f"generated samples: 100, judged by the classifier in {judge_dir}" in text
    shares = counts / counts.sum()
    largest = int(counts.argmax())
    assert (f"classes covered: {covered}/10; entropy {entropy(counts):.3f} nats "
            f"({entropy(counts) / np.log(10):.2f} of the maximum); largest class '{largest}' "
            f"{shares[largest]:.0%}") in text, text
    assert f"Fréchet distance on the judge's features (not FID): {quality['frechet_distance']:.4g}" in text
    assert f"label agreement: mean {np.mean(list(agreement.values())):.3f}" in text


def test_a_gan_run_writes_its_report_page(cgan_run):
    """The report page of a GAN run: its losses, its sample grids and no sections of supervised
    runs (learning curves, final metrics, a diagnosis), nothing that failed to draw."""
    page = (cgan_run / "report.html").read_text()
    titles = re.findall(r"<h2>(.*?)</h2>", page)
    assert "Adversarial losses" in titles and "Generated samples" in titles
    assert not {"Learning curves", "Final metrics", "Diagnosis", "Model"} & set(titles)
    assert 'id="fig-gan-losses"' in page and 'id="fig-samples-epoch-001"' in page
    assert "could not be drawn" not in page
    # the sample grid on the page is the run's own file, byte for byte
    grid = re.search(r'id="fig-samples-epoch-001" class="figure" src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(grid) == (cgan_run / "samples" / "epoch-001.png").read_bytes()
