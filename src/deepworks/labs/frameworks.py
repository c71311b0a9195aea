"""The ``frameworks`` lab: one trained model in three conventions: ONNX (run by ONNX Runtime, the
same outputs as PyTorch), a PyTorch state dict, and a scikit-learn estimator."""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from deepworks.labs import LabContext, lab

EXPORT = "pip install 'deepworks[export]'"


@lab("frameworks", "the same model in ONNX Runtime (outputs compared with PyTorch), as a state dict and as a "
     "scikit-learn estimator", needs=[("onnx", EXPORT), ("onnxruntime", EXPORT), ("onnxscript", EXPORT)])
def frameworks(lab: LabContext) -> None:
    import onnxruntime as ort
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import deepworks
    from deepworks.data import load_dataset

    model_keys = {"filters": [8, 16], "hidden": [32], "batch_norm": True, "dropout": 0.0, "head_dropout": 0.0}
    config = {
        "name": "frameworks", "seed": lab.seed, "report": False,
        "data": {"dataset": "digits"},
        "model": {"name": "cnn", **model_keys},
        "train": {"epochs": lab.pick(4, 6), "batch_size": lab.pick(32, 64), "optimizer": {"name": "adamw", "lr": 3e-3}},
    }
    if lab.fast:
        config["data"]["subset"] = {"train_per_class": 30, "val_per_class": 10, "seed": lab.seed}
    lab.step("a small CNN on digits with deepworks.train")
    run = lab.train(config, "cnn")
    # opset 17 takes the TorchScript exporter (well under a second); 18, the default, tries the slower
    # dynamo exporter first
    opset = lab.pick(17, 18)
    lab.step(f"deepworks.export: model.onnx, opset {opset} (+ its own parity check on validation samples)")
    exported = deepworks.export(run.dir, opset=opset)

    # every digit through ONNX Runtime (raw pixels in [0, 1]: the run's normalisation is inside the graph)
    # and through the run's PyTorch model (normalised as training did)
    data = load_dataset("digits")
    n = lab.pick(300, len(data.y))
    pixels = (data.x[:n].float() * data.scale).numpy().astype(np.float32)
    info = json.loads((run.dir / "data.json").read_text())
    session = ort.InferenceSession(exported["path"], providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    onnx_logits = session.run(None, {exported["input"]["name"]: pixels})[0]
    onnx_ms = (time.perf_counter() - start) * 1000
    model = run.model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        torch_logits = model((torch.from_numpy(pixels) - info["mean"][0]) / info["std"][0]).numpy()
        torch_ms = (time.perf_counter() - start) * 1000
    diff = np.abs(onnx_logits - torch_logits)
    agree = float((onnx_logits.argmax(1) == torch_logits.argmax(1)).mean())
    accuracy = float((onnx_logits.argmax(1) == data.y[:n].numpy()).mean())

    # the PyTorch convention: a state dict (names -> tensors) loaded into a freshly built model
    lab.step("the PyTorch state dict into a new model built by deepworks.create_model")
    path = lab.out / "cnn_state_dict.pt"
    torch.save(model.state_dict(), path)
    fresh = deepworks.create_model("cnn", input_shape=tuple(info["input_shape"]), num_classes=10, **model_keys)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    fresh.eval()
    with torch.no_grad():
        again = fresh((torch.from_numpy(pixels) - info["mean"][0]) / info["std"][0]).numpy()
    state = model.state_dict()
    state_diff = float(np.abs(again - torch_logits).max())
    parameters = sum(p.numel() for p in model.parameters())
    buffers = sum(int(b.numel()) for name, b in model.named_buffers() if "running" in name)  # BN means, variances
    counters = sum(int(b.numel()) for name, b in model.named_buffers() if "running" not in name)  # num_batches_tracked

    # the scikit-learn convention: fit/predict, so Pipeline and cross_val_score work unchanged
    lab.step("deepworks.sklearn.DeepClassifier in a Pipeline, with cross_val_score")
    from deepworks.sklearn import DeepClassifier

    rows = lab.pick(500, len(data.y))
    X = data.x[:rows].float().flatten(1).numpy() * data.scale
    y = data.y[:rows].numpy()
    deep = make_pipeline(StandardScaler(), DeepClassifier(model_params={"hidden": [64], "dropout": 0.1},
                                                          epochs=lab.pick(8, 15), lr=3e-3, random_state=lab.seed))
    folds = 3
    deep_scores = cross_val_score(deep, X, y, cv=folds)
    linear_scores = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), X, y, cv=folds)

    lab.record(onnx_max_abs_diff=float(diff.max()), onnx_mean_abs_diff=float(diff.mean()),
               export_parity_max_abs_diff=exported["parity"]["max_abs_diff"], tolerance=exported["parity"]["tolerance"],
               opset=exported["opset"], prediction_agreement=agree, onnx_accuracy=accuracy, samples=n,
               onnx_ms=onnx_ms, torch_ms=torch_ms, state_dict_tensors=len(state), parameters=parameters,
               buffers=buffers, state_dict_max_abs_diff=state_diff,
               cv_deep=deep_scores, cv_logistic=linear_scores, cv_rows=rows, test_accuracy=run.summary["test"]["accuracy"])

    fig, axes = lab.figure(1, 3, figsize=(15, 4.4))
    ax = axes[0]
    ax.scatter(torch_logits.ravel(), onnx_logits.ravel(), s=3, alpha=0.4)
    lo, hi = float(torch_logits.min()), float(torch_logits.max())
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--", label="y = x")
    ax.set_xlabel("PyTorch logit")
    ax.set_ylabel("ONNX Runtime logit")
    ax.set_title(f"{n} digits x 10 classes: max |diff| {diff.max():.1e}\n"
                 f"same predicted class for {agree:.1%}", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.hist(np.log10(diff.ravel() + 1e-12), bins=40, color="C1")
    ax.axvline(np.log10(exported["parity"]["tolerance"]), color="k", ls="--",
               label=f"export tolerance {exported['parity']['tolerance']:g}")
    ax.set_xlabel("log10 |ONNX - PyTorch| per logit (-12: exactly equal)")
    ax.set_ylabel("count")
    ax.set_title(f"every difference {'below' if diff.max() <= exported['parity']['tolerance'] else 'NOT below'} "
                 "the export tolerance", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[2]
    x = np.arange(folds)
    ax.bar(x - 0.2, deep_scores, 0.4, label=f"StandardScaler + DeepClassifier (mean {deep_scores.mean():.3f})")
    ax.bar(x + 0.2, linear_scores, 0.4, label=f"StandardScaler + LogisticRegression (mean {linear_scores.mean():.3f})")
    ax.set_xticks(x, [f"fold {i + 1}" for i in x])
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("accuracy")
    ax.set_title(f"cross_val_score, {folds} folds, {rows} digits", fontsize=10)
    ax.legend(fontsize=8, loc="upper center")
    lab.save(fig, "frameworks")

    lab.say(f"deepworks.export wrote model.onnx (opset {exported['opset']}, {exported['exporter']} exporter) and checked it on validation samples "
            f"(max difference {exported['parity']['max_abs_diff']:.1e}, tolerance {exported['parity']['tolerance']:g}). "
            f"Run by ONNX Runtime on {n} raw digits, its logits differ from PyTorch's by at most {diff.max():.1e} "
            f"(mean {diff.mean():.1e}) and {agree:.1%} of the predicted classes agree (accuracy {accuracy:.1%} on these digits, training ones included).")
    lab.say(f"The PyTorch convention is a state dict: {len(state)} named tensors ({parameters} parameters and "
            f"{buffers} batch-norm running means and variances, plus {counters} batch counters); loaded into a new model from "
            f"deepworks.create_model it gives {'the same logits' if state_diff <= 1e-5 else 'different logits'} "
            f"(max difference {state_diff:.1g}). deepworks itself keeps them as model.safetensors in the run.")
    lab.say(f"The scikit-learn convention is fit/predict: DeepClassifier after a StandardScaler in a Pipeline scores "
            f"{deep_scores.mean():.3f} in {folds}-fold cross_val_score on {rows} digits, against "
            f"{linear_scores.mean():.3f} for LogisticRegression in the same Pipeline.")
