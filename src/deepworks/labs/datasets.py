"""The ``datasets`` lab: training, validation and test splits, and what leakage (copies of
training samples in the test split) does to a test score."""

from __future__ import annotations

import numpy as np

from deepworks.labs import LabContext, lab, split_bars

COPIES = 3  # each digit image appears this many times in the table


@lab("datasets", "train/validation/test splits, stratified; a leaky split (copies in test) against clean ones")
def datasets(lab: LabContext) -> None:
    import json

    import pandas as pd

    from deepworks.config import load_config
    from deepworks.errors import DataError
    from deepworks.labs.softmax import write_digits_csv
    from deepworks.pipeline import prepare_data

    originals = lab.pick(300, 500)
    table = write_digits_csv(lab.out / "digits.csv", lab.seed, rows=originals)
    table.insert(0, "source", [f"img{i}" for i in range(len(table))])  # which original image a row copies
    copied = pd.concat([table] * COPIES, ignore_index=True).sample(frac=1.0, random_state=lab.seed)
    csv = lab.out / "digits_copied.csv"
    copied.to_csv(csv, index=False)
    lab.step(f"{csv.name}: {originals} digit images, each {COPIES} times ({len(copied)} rows), as happens when a "
             "dataset is merged from overlapping sources")

    epochs = lab.pick(8, 20)
    base = {
        "name": "leak", "seed": lab.seed,
        "data": {"path": str(csv), "target": "digit", "columns": {"source": {"kind": "ignore"}}},
        "model": {"name": "mlp", "hidden": [128], "dropout": 0.0},
        "train": {"epochs": epochs, "batch_size": 32, "optimizer": {"name": "adamw", "lr": 3e-3}},
        "report": False,
    }
    # the toolkit's check, before any training: data.on_duplicates: error stops with the counts
    stopped, message = 0, ""
    try:
        prepare_data(load_config(base, {"data.on_duplicates": "error"}))
    except DataError as exc:
        stopped, message = 1, str(exc)
    settings = {
        "leaky (on_duplicates: keep)": {"data": {"on_duplicates": "keep"}},
        "copies dropped (on_duplicates: drop, the default)": {"data": {"on_duplicates": "drop"}},
        "clean (group_by: source)": {"data": {"group_by": "source", "columns": {}}},
    }
    results = {}
    for label, change in settings.items():
        key = label.split(" ")[0]
        lab.step(f"deepworks.train, {label}")
        cfg = {**base, "data": {**base["data"], **change["data"]}}
        run = lab.train(cfg, key)
        split_cfg = run.config  # the fractions the runs split with (the same in every run)
        info = json.loads((run.dir / "data.json").read_text())
        dup = info["duplicates"]
        results[key] = {
            "label": label,
            "test_accuracy": run.summary["test"]["accuracy"],
            "train_accuracy": run.summary["train"]["accuracy"],
            "val_accuracy": run.summary["val"]["accuracy"],
            "sizes": info["sizes"],
            "test_rows_copying_training": dup["leaked"]["test"],
            "val_rows_copying_training": dup["leaked"]["val"],
            "dropped_test": dup["dropped"]["test"],
            "class_counts": info["class_counts"],
        }
    leaky, dropped, clean = results["leaky"], results["copies"], results["clean"]
    inflation = leaky["test_accuracy"] - clean["test_accuracy"]
    lab.record(originals=originals, copies=COPIES, rows=len(copied), on_duplicates_error_stopped=stopped,
               inflation_points=100 * inflation,
               runs={k: {n: v for n, v in r.items() if n != "label"} for k, r in results.items()})

    fig, axes = lab.figure(1, 2, figsize=(12, 4.3), gridspec_kw={"width_ratios": [1.2, 1]})
    ax = axes[0]
    names = ["leaky\non_duplicates: keep", "copies dropped\non_duplicates: drop", "clean\ngroup_by: source"]
    x = np.arange(3)
    for offset, part, colour in ((-0.2, "train_accuracy", "tab:gray"), (0.2, "test_accuracy", "tab:blue")):
        values = [results[k][part] for k in ("leaky", "copies", "clean")]
        bars = ax.bar(x + offset, values, width=0.4, color=colour, label=part.replace("_", " "))
        for b, v in zip(bars, values):
            ax.text(b.get_x() + b.get_width() / 2, v + 0.005, f"{v:.3f}", ha="center", fontsize=8)
    names = [
        f"{names[0]}\ntest: {leaky['sizes']['test']} rows, {leaky['test_rows_copying_training']} copies",
        f"{names[1]}\n{dropped['dropped_test']} copies dropped, {dropped['sizes']['test']} left",
        f"{names[2]}\ntest: {clean['sizes']['test']} rows, {clean['test_rows_copying_training']} copies",
    ]
    ax.set_xticks(x)
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylim(0.7, 1.1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"same data, same model: the test score under leakage (+{100 * inflation:.1f} points)", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    ax = axes[1]
    counts = clean["class_counts"]
    share = {split: np.array(counts[split]) / max(sum(counts[split]), 1) for split in ("train", "val", "test")}
    split_bars(ax, share, {split: f"{split} ({clean['sizes'][split]} rows)" for split in share}, "share of the split")
    ax.set_xlabel("digit")
    ax.set_title("class shares per split (clean run): stratified, about equal", fontsize=10)
    ax.legend(fontsize=8, loc="lower center", ncol=3)
    lab.save(fig, "leakage")

    spread = max(float(np.abs(share["test"] - share["train"]).max()), float(np.abs(share["val"] - share["train"]).max()))
    lab.record(largest_class_share_difference=spread)
    lab.say(f"The table holds {originals} digit images {COPIES} times each ({len(copied)} rows). Split row by row and "
            f"kept as is (data.on_duplicates: keep), {leaky['test_rows_copying_training']} of the {leaky['sizes']['test']} "
            f"test rows are copies of training rows, and the test accuracy is {leaky['test_accuracy']:.1%}.")
    if inflation > 0:
        effect = (f"the leaky score was inflated by {100 * inflation:.1f} points (its training accuracy is "
                  f"{leaky['train_accuracy']:.1%}; leaked rows are scored on memory)")
    else:
        effect = (f"the leaky score was not higher here ({100 * inflation:+.1f} points; its training accuracy is "
                  f"{leaky['train_accuracy']:.1%})")
    lab.say(f"Split so that every copy of an image stays in one split (data.group_by: source), the same model scores "
            f"{clean['test_accuracy']:.1%} on {clean['sizes']['test']} unseen images: {effect}.")
    said = message.split(": ", 1)[-1].split(";")[0]  # the counts, without the file's path
    check = (f"data.on_duplicates: error stopped before training (\"{said}\")" if stopped else
             "data.on_duplicates: error did not stop (no copies across splits found)")
    lab.say(f"deepworks finds the copies by hashing every row: {check}, and the default, drop, removed "
            f"{dropped['dropped_test']} copied test rows, leaving {dropped['sizes']['test']} (test accuracy "
            f"{dropped['test_accuracy']:.1%} on them); splitting by group (data.group_by) instead leaves "
            f"{clean['test_rows_copying_training']} copied rows in a test split of {clean['sizes']['test']}.")
    fractions = split_cfg.data
    lab.say(f"Sizes of the clean split: train {clean['sizes']['train']}, validation {clean['sizes']['val']}, test "
            f"{clean['sizes']['test']} rows (data.val_fraction {fractions.val_fraction:g}, data.test_fraction "
            f"{fractions.test_fraction:g}); stratification keeps each digit's share within {100 * spread:.1f} points "
            "of the training split's.")
