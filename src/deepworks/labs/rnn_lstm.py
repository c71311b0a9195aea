"""The ``rnn-lstm`` lab: a plain RNN and an LSTM must remember a text's first word across up to
N filler words; the gradient through time shows why the RNN forgets."""

from __future__ import annotations

import csv
import json
import random

import numpy as np

from deepworks.labs import LabContext, lab

MARKERS = 4  # classes: the first word is m0..m3, the label c0..c3
FILLER = 20  # filler words w0..w19, drawn at random


def _text(rng: random.Random, k: int, gap: int) -> str:
    return " ".join([f"m{k}"] + [f"w{rng.randrange(FILLER)}" for _ in range(gap)])


def _write(path, rng: random.Random, n: int, longest: int) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for _ in range(n):
            k = rng.randrange(MARKERS)
            w.writerow([_text(rng, k, rng.randint(0, longest)), f"c{k}"])


@lab("rnn-lstm", "a plain RNN and an LSTM remember a text's first word across filler words; gradient norm per time step")
def rnn_lstm(lab: LabContext) -> None:
    import torch

    import deepworks
    from deepworks.data.text import TextEncoder

    longest = lab.pick(30, 60)
    n = lab.pick(1000, 2000)
    epochs = lab.pick(4, 10)
    rng = random.Random(lab.seed)
    path = lab.out / "first-word.csv"
    _write(path, rng, n, longest)
    lab.step(f"{n} texts: a first word m0..m3 (the class), then 0 to {longest} random filler words; "
             f"rnn and lstm, {epochs} epochs each")

    runs = {}
    for kind in ("rnn", "lstm"):
        cfg = {
            "name": f"first-word-{kind}",
            "seed": lab.seed,
            "data": {"path": str(path), "text": "text", "target": "label", "tokenizer": "whitespace", "min_freq": 1,
                     "max_length": longest + 1},
            # every setting named: the recurrence alone must carry the first word to the last step
            "model": {"name": kind, "embedding": 16, "hidden": 32, "pool": "last", "bidirectional": False,
                      "embedding_dropout": 0.0, "head_dropout": 0.0},
            "train": {"epochs": epochs, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.005},
                      "schedule": "constant", "label_smoothing": 0.0, "early_stopping": None, "log_gradients": 10},
            "report": False,
        }
        runs[kind] = lab.train(cfg, f"first-word-{kind}")

    # accuracy by distance: fresh texts with a known gap, through deepworks.predict
    gaps = list(range(0, longest + 1, max(1, longest // 10)))
    per_gap = lab.pick(20, 40)
    probe = random.Random(lab.seed + 1)
    texts, truth, where = [], [], []
    for gap in gaps:
        for _ in range(per_gap):
            k = probe.randrange(MARKERS)
            texts.append(_text(probe, k, gap))
            truth.append(f"c{k}")
            where.append(gap)
    accuracy, first_grads = {}, {}
    for kind, run in runs.items():
        predicted = [p["prediction"] for p in deepworks.predict(run.dir, texts=texts)]
        hits = np.array([a == b for a, b in zip(predicted, truth)])
        accuracy[kind] = [float(hits[np.array(where) == g].mean()) for g in gaps]
        records = [json.loads(line) for line in (run.dir / "gradients.jsonl").read_text().splitlines()]
        first_grads[kind] = records[0]["time_steps"]  # the toolkit's record of the first training step

    # the trained models on texts with the longest gap: how much the right class's score depends on
    # each word (the model's per-time-step input gradients, as train.log_gradients records them)
    long_texts = [t for t, g in zip(texts, where) if g == gaps[-1]]
    long_truth = torch.tensor([int(c[1:]) for c, g in zip(truth, where) if g == gaps[-1]])
    trained = {}
    for kind, run in runs.items():
        info = json.loads((run.dir / "data.json").read_text())
        ids = TextEncoder.from_dict(info["text"]).encode(long_texts).ids
        order = [info["classes"].index(f"c{k}") for k in range(MARKERS)]
        model = run.model.eval()
        model.track_input_grads = True
        with torch.enable_grad():
            model(ids)[:, order].gather(1, long_truth[:, None]).sum().backward()
        model.track_input_grads = False
        trained[kind] = model.input_grad_norms()
    back = gaps[-1]  # steps back from the last word to the first word
    first_word = {kind: trained[kind][back] / trained[kind][0] for kind in runs}
    untrained = {kind: first_grads[kind][min(back, len(first_grads[kind]) - 1)] / first_grads[kind][0] for kind in runs}
    reach = {kind: run.summary["gradient_reach"]["steps"] for kind, run in runs.items()}
    test_acc = {kind: run.summary["test"]["accuracy"] for kind, run in runs.items()}
    far = [i for i, g in enumerate(gaps) if g >= longest // 2]
    far_acc = {kind: float(np.mean([accuracy[kind][i] for i in far])) for kind in runs}
    lab.record(longest_gap=longest, texts=n, epochs=epochs, chance=1 / MARKERS, gaps=gaps, accuracy_by_gap=accuracy,
               far_accuracy=far_acc, test_accuracy=test_acc,
               grad_norm_by_step_back_trained=trained, grad_norm_by_step_back_first_step=first_grads,
               first_word_grad_over_last_word_trained=first_word, grad_ratio_first_step=untrained,
               gradient_reach_steps=reach)

    colors = {"rnn": "tab:red", "lstm": "tab:blue"}
    fig, axes = lab.figure(1, 2, figsize=(11.5, 4.2))
    for kind in runs:
        axes[0].plot(gaps, accuracy[kind], marker="o", color=colors[kind], label=kind)
    axes[0].axhline(1 / MARKERS, color="gray", ls=":", label="chance (4 classes)")
    axes[0].set_ylim(0, 1.05)
    axes[0].set_xlabel("filler words between the first word and the end")
    axes[0].set_ylabel(f"accuracy ({per_gap} new texts per point)")
    axes[0].set_title(f"remembering the first word ({epochs} epochs)", fontsize=10)
    axes[0].legend(fontsize=8)
    for kind in runs:
        axes[1].semilogy(range(len(first_grads[kind])), first_grads[kind], color=colors[kind], ls="--", lw=1,
                         label=f"{kind}, first training step (untrained)")
        axes[1].semilogy(range(len(trained[kind])), trained[kind], color=colors[kind], lw=2,
                         label=f"{kind}, trained, texts of {back} filler words")
    axes[1].axvline(back, color="gray", ls=":", lw=1)
    axes[1].annotate("first word", (back, 0.98), xycoords=("data", "axes fraction"), ha="right", va="top",
                     fontsize=8, rotation=90)
    axes[1].set_xlabel("time steps back from the last word")
    axes[1].set_ylabel("gradient norm at that step's input")
    axes[1].set_title("gradient through time (per time step)", fontsize=10)
    axes[1].legend(fontsize=7)
    lab.save(fig, "rnn_lstm")

    lab.say(f"Texts whose class is their first word, followed by 0 to {longest} random filler words: after "
            f"{epochs} epochs the LSTM is right on {far_acc['lstm']:.0%} of new texts with {gaps[far[0]]} or more "
            f"filler words, the plain RNN on {far_acc['rnn']:.0%} (chance {1 / MARKERS:.0%}); with no filler they "
            f"get {accuracy['lstm'][0]:.0%} and {accuracy['rnn'][0]:.0%}.")
    ratio = first_word["lstm"] / first_word["rnn"] if first_word["rnn"] > 0 else float("inf")
    if ratio > 1:
        compared = (f"{ratio:.2g} times more for the LSTM: more of the LSTM's gradient crosses the filler, the "
                    "RNN's shrinks more with every step back")
    else:
        compared = f"the RNN's is {1 / ratio:.2g} times the LSTM's here: in this run the RNN's gradient crosses the filler better"
    lab.say(f"After training, on texts with {back} filler words, the gradient of the right class's score with "
            f"respect to the first word is {first_word['lstm']:.3g} times that of the last word for the LSTM and "
            f"{first_word['rnn']:.3g} for the RNN ({compared}). At the first training step (untrained) the loss's "
            f"gradient {back} steps back was {untrained['lstm']:.2g} (LSTM) and {untrained['rnn']:.2g} (RNN) of the last step's.")
    lab.say(f"The RNN's state passes through tanh and the same weights at every step, so what the first word "
            f"left in it shrinks step by step; the LSTM adds to its cell state through gates it learns to keep "
            f"open. Config keys: model.name (rnn, lstm, gru), model.hidden, and train.log_gradients (gradient norms "
            f"per layer and per time step in gradients.jsonl, every N steps).")
