"""The ``image-classification`` lab: the whole pipeline on digits, step by step: data and its
stratified split, preprocessing and augmentation, training, evaluation, inference on image files."""

from __future__ import annotations

import numpy as np

from deepworks.labs import LabContext, lab, split_bars

AUGMENT = [{"random_crop": {"padding": 1}}, {"rotate": {"degrees": 8}}]


@lab("image-classification", "the whole pipeline on digits: data, split, augmentation, training, evaluation, inference")
def image_classification(lab: LabContext) -> None:
    import torch
    from PIL import Image

    import deepworks
    from deepworks.config import load_config
    from deepworks.data import build_augment
    from deepworks.pipeline import prepare_data

    epochs = lab.pick(4, 25)
    config = {
        "name": "digits-cnn", "seed": lab.seed,
        "data": {"dataset": "digits", "augment": AUGMENT},
        "model": {"name": "cnn", "blocks": [{"filters": 16}, {"filters": 32}], "hidden": [64]},
        "train": {"epochs": epochs, "batch_size": 32, "optimizer": {"name": "adamw", "lr": 3e-3}},
        "report": False,
    }

    # 1. data: the split deepworks makes (seeded, stratified) and what it normalises with
    lab.step("1. data: deepworks.pipeline.prepare_data (the split and normalisation deepworks.train uses)")
    data = prepare_data(load_config(config))
    info = data.info
    sizes, counts = info["sizes"], info["class_counts"]
    mean, std = info["mean"][0], info["std"][0]
    scale = info["pixels"]["scale"]

    # 2. preprocessing: pixels -> [0, 1] -> standardised; augmentation on training batches only
    lab.step(f"2. preprocessing: pixels x {scale:g}, minus {mean:.3f}, over {std:.3f}; augmentation {AUGMENT}")
    augment = build_augment(AUGMENT, seed=lab.seed, input_shape=data.input_shape, mean=info["mean"], std=info["std"])
    originals = data.train.inputs(torch.arange(6))  # normalised float batch, as the model sees it
    views = [augment(originals, epoch=e, step=0) for e in range(3)]  # what three epochs show of the same images
    normalised = data.train.inputs()
    stats = {"mean_after": float(normalised.mean()), "std_after": float(normalised.std())}

    # 3. training
    lab.step(f"3. deepworks.train: a small CNN, {epochs} epochs, AdamW lr 3e-3")
    run = lab.train(config, "digits-cnn")
    hist = run.history
    best_epoch = int(run.summary["best_epoch"])

    # 4. evaluation on the test split (the run's best model)
    lab.step("4. deepworks.evaluate(run.dir, split='test')")
    report = deepworks.evaluate(run.dir, split="test")
    confusion = np.array(report["confusion_matrix"])

    # 5. inference on image files, as a user would call it
    lab.step("5. deepworks.predict on PNG files written from test images")
    files, truths = [], []
    for i in range(lab.pick(4, 6)):
        pixels = (data.test.x[i, 0].numpy().astype(float) * scale * 255).round().clip(0, 255).astype(np.uint8)
        path = lab.out / f"test_image_{i}.png"
        Image.fromarray(pixels, mode="L").save(path)  # the test image itself, 8x8 grey
        files.append(path)
        truths.append(run.classes[int(data.test.y[i])])
    predictions = deepworks.predict(run.dir, files, top_k=3)
    right = sum(p["prediction"] == t for p, t in zip(predictions, truths))
    # what the run's model answered for the same test images during evaluation (its saved outputs):
    # a file read back through predict must get that same answer (the same preprocessing)
    from deepworks.evaluation.predictions import load_predictions

    tested = load_predictions(run.dir / "predictions.safetensors")["test"]["outputs"][: len(files)].argmax(1)
    as_tested = sum(p["prediction"] == run.classes[int(c)] for p, c in zip(predictions, tested))

    lab.record(
        sizes=sizes, class_counts=counts, normalise_mean=mean, normalise_std=std, **stats,
        epochs=epochs, best_epoch=best_epoch,
        train_loss=[h["train_loss"] for h in hist], val_loss=[h["val_loss"] for h in hist],
        train_accuracy=[h["train_accuracy"] for h in hist], val_accuracy=[h["val_accuracy"] for h in hist],
        test={k: report[k] for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1")},
        confusion_matrix=confusion, predicted_files=len(files), predicted_right=right,
        predicted_as_tested=as_tested,
    )
    _figures(lab, data, counts, originals, views, hist, best_epoch, confusion, report, files, predictions, truths)

    worst = max(((i, j) for i in range(10) for j in range(10) if i != j), key=lambda ij: confusion[ij])
    lab.say(f"Data: {sum(sizes.values()):,} digits split by deepworks into train {sizes['train']}, validation {sizes['val']} and test "
            f"{sizes['test']} images, stratified (every digit {min(counts['test'])}-{max(counts['test'])} times in test); "
            f"keys data.val_fraction, data.test_fraction.")
    lab.say(f"Preprocessing: pixels are scaled to [0, 1] and standardised with the training split's mean {mean:.3f} "
            f"and std {std:.3f} (after it: mean {stats['mean_after']:.3f}, std {stats['std_after']:.3f}; "
            f"data.normalize); data.augment shifts and rotates each training batch differently every epoch.")
    lab.say(f"Training: {epochs} epochs of a CNN; training loss {hist[0]['train_loss']:.2f} -> {hist[-1]['train_loss']:.2f}, "
            f"validation accuracy {hist[0]['val_accuracy']:.1%} -> {hist[-1]['val_accuracy']:.1%}; the best epoch "
            f"({best_epoch}, by train.monitor) is the model kept.")
    lab.say(f"Evaluation on the {int(confusion.sum())} test images (deepworks.evaluate): accuracy {report['accuracy']:.1%}, "
            f"macro precision {report['macro_precision']:.1%}, recall {report['macro_recall']:.1%}, F1 "
            f"{report['macro_f1']:.1%}; the most frequent confusion is a true {worst[0]} read as {worst[1]} "
            f"({int(confusion[worst])} times).")
    lab.say(f"Inference: deepworks.predict on {len(files)} PNG files got {right} right, each the answer the model gave "
            f"that test image in evaluation ({as_tested} of {len(files)}); the same run can be exported "
            f"to ONNX (deepworks export RUN) and served over HTTP (deepworks serve RUN).")


def _figures(lab, data, counts, originals, views, hist, best_epoch, confusion, report, files, predictions, truths):
    from PIL import Image

    # data: one training image per class, and the class counts per split
    fig, axes = lab.figure(2, 10, figsize=(12, 4.4), gridspec_kw={"height_ratios": [1, 1.6]})
    y = data.train.y.numpy()
    for k in range(10):
        i = int(np.flatnonzero(y == k)[0])
        axes[0, k].imshow(data.train.x[i, 0].numpy(), cmap="gray_r")
        axes[0, k].set_title(f"label {k}", fontsize=9)
        axes[0, k].axis("off")
    grid = axes[1, 0].get_gridspec()
    for ax in axes[1]:
        ax.remove()
    ax = fig.add_subplot(grid[1, :])
    split_bars(ax, counts, {split: f"{split}: {sum(counts[split])} images" for split in counts}, "images")
    ax.set_xlabel("digit")
    ax.set_title("1. data: the stratified split (each digit in every split)", fontsize=10)
    ax.set_ylim(0, 1.3 * max(counts["train"]))
    ax.legend(fontsize=8, ncol=3, loc="upper center")
    lab.save(fig, "1_data")

    # preprocessing and augmentation
    fig, axes = lab.figure(len(views) + 1, len(originals), figsize=(1.5 * len(originals), 1.6 * (len(views) + 1)))
    for c in range(len(originals)):
        for r, batch in enumerate([originals, *views]):
            axes[r, c].imshow(batch[c, 0].numpy(), cmap="gray_r", vmin=-1, vmax=2.5)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[0, c].set_title(f"label {int(data.train.y[c])}", fontsize=9)
    axes[0, 0].set_ylabel("normalised", fontsize=8)
    for r in range(len(views)):
        axes[r + 1, 0].set_ylabel(f"epoch {r + 1}", fontsize=8)
    fig.suptitle("2. preprocessing: standardised pixels, then data.augment (random_crop + rotate) differs each epoch",
                 fontsize=9)
    lab.save(fig, "2_augmentation")

    # training curves, confusion matrix, predictions
    fig, axes = lab.figure(1, 3, figsize=(15, 4.3))
    x = [h["epoch"] for h in hist]
    axes[0].plot(x, [h["train_loss"] for h in hist], "o-", label="training loss")
    axes[0].plot(x, [h["val_loss"] for h in hist], "o-", label="validation loss")
    ax2 = axes[0].twinx()
    ax2.plot(x, [h["val_accuracy"] for h in hist], "s--", color="tab:green", label="validation accuracy")
    ax2.set_ylabel("validation accuracy")
    ax2.set_ylim(0, 1)
    axes[0].axvline(best_epoch, color="gray", ls=":", label=f"kept: epoch {best_epoch}")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].set_title("3. training (deepworks.train)", fontsize=10)
    lines = axes[0].get_legend_handles_labels()
    more = ax2.get_legend_handles_labels()
    axes[0].legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="center right")
    im = axes[1].imshow(confusion, cmap="Blues")
    for i in range(10):
        for j in range(10):
            if confusion[i, j]:
                axes[1].text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                             color="white" if confusion[i, j] > confusion.max() / 2 else "black")
    axes[1].set_xticks(range(10))
    axes[1].set_yticks(range(10))
    axes[1].set_xlabel("predicted")
    axes[1].set_ylabel("true")
    axes[1].set_title(f"4. test (deepworks.evaluate): accuracy {report['accuracy']:.3f}, macro F1 "
                      f"{report['macro_f1']:.3f}", fontsize=10)
    fig.colorbar(im, ax=axes[1], shrink=0.8)
    axes[2].axis("off")
    axes[2].set_title("5. inference (deepworks.predict on PNG files)", fontsize=10)
    n = len(files)
    for i, (path, pred, truth) in enumerate(zip(files, predictions, truths)):
        top = pred["top_k"]
        inset = axes[2].inset_axes([i / n + 0.01, 0.45, 1 / n - 0.02, 0.45])
        inset.imshow(np.asarray(Image.open(path)), cmap="gray_r")
        inset.set_xticks([])
        inset.set_yticks([])
        ok = "right" if pred["prediction"] == truth else "wrong"
        inset.set_title(f"file {i}\ntrue {truth}", fontsize=8)
        text = "\n".join(f"{t['class']}: {t['probability']:.2f}" for t in top[:3])
        axes[2].text(i / n + 0.5 / n, 0.4, f"{ok}\n{text}", ha="center", va="top", fontsize=8,
                     transform=axes[2].transAxes, color="tab:green" if ok == "right" else "tab:red")
    lab.save(fig, "3_train_evaluate_predict")
