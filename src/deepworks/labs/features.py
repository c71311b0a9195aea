"""The ``features`` lab: a mixed table (numeric, categorical, ordinal columns, missing cells) through
deepworks' table encoder (scaling, one-hot, ordinal codes, imputation), permutation importance on a
target built from known columns, and PCA / t-SNE of what the trained model learned."""

from __future__ import annotations

import csv
import json

import numpy as np

from deepworks.labs import LabContext, lab

CITIES = ["north", "south", "east", "west"]
SIZES = ["small", "medium", "large"]


def _write_table(lab: LabContext, rows: int):
    """A synthetic customer table; ``spend`` depends on income, size and city (in that order of
    strength) and not at all on age or noise. Returns the path and the raw columns."""
    rng = np.random.default_rng(lab.seed)
    income = rng.lognormal(mean=10.8, sigma=0.5, size=rows)  # about 20,000 to 150,000: a large scale
    age = rng.integers(18, 80, size=rows)
    city = rng.choice(CITIES, size=rows)
    size = rng.choice(SIZES, size=rows)
    noise = rng.normal(0.0, 1.0, size=rows)
    z_income = (np.log(income) - 10.8) / 0.5
    level = np.array([SIZES.index(s) for s in size]) - 1.0
    spend = 100 + 30 * z_income + 20 * level + 15 * (city == "north") + rng.normal(0, 5, size=rows)
    path = lab.out / "customers.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["income", "age", "city", "size", "noise", "spend"])
        for i in range(rows):
            # about 5% of the income, age and city cells are missing (empty): the encoder imputes them
            cells = [f"{income[i]:.0f}", str(age[i]), city[i], size[i], f"{noise[i]:.3f}", f"{spend[i]:.2f}"]
            for j in (0, 1, 2):
                if rng.random() < 0.05:
                    cells[j] = ""
            w.writerow(cells)
    return path


@lab("features", "a mixed table through scaling, one-hot and imputation; permutation importance; PCA and t-SNE")
def features(lab: LabContext) -> None:
    import deepworks
    from deepworks.data.features import TableEncoder
    from deepworks.data.tabular import read_table

    rows = lab.pick(400, 1500)
    lab.step(f"a synthetic table of {rows} customers: income, age, city, size (ordinal), noise -> spend")
    path = _write_table(lab, rows)
    config = {
        "name": "features", "seed": lab.seed, "report": False,
        "data": {"path": str(path), "target": "spend", "task": "regression", "scaling": "standard",
                 "columns": {"size": {"order": SIZES}}},  # an ordinal column: its order is declared
        "model": {"name": "mlp", "hidden": [64, 32], "dropout": 0.0},
        "train": {"epochs": lab.pick(15, 40), "batch_size": 32, "optimizer": {"name": "adam", "lr": 3e-3}},
    }
    lab.step("deepworks.train: the encoder is fitted on the training rows, then an MLP regression")
    run = lab.train(config, "features")
    info = json.loads((run.dir / "data.json").read_text())
    names, groups = info["feature_names"], info["feature_groups"]
    encoder = TableEncoder.from_dict(info["encoder"])
    header, cells, lines = read_table(path)
    # rows to show: the first complete ones and the first ones with an empty cell (imputed + indicator)
    gaps = [i for i, row in enumerate(cells) if any(c == "" for c in row)]
    full = [i for i, row in enumerate(cells) if i not in set(gaps)]
    picked = sorted(full[:7] + gaps[:5])
    shown = len(picked)
    columns = {name: [cells[r][i] for r in picked] for i, name in enumerate(header) if name != "spend"}
    matrix = encoder.transform(columns)  # the first rows as the model sees them
    kinds = {c["name"]: c["kind"] for c in encoder.columns}
    r2 = run.summary["test"]["r2"]

    lab.step("deepworks.importance: shuffle each input column, measure the drop of R2")
    imp = deepworks.importance(run.dir, split="val", repeats=lab.pick(3, 5), seed=lab.seed)
    ranking = [c["column"] for c in imp["columns"]]
    drops = {c["column"]: c["mean_drop"] for c in imp["columns"]}
    lab.step("deepworks.projection: the last hidden layer's activations in 2-D, PCA and t-SNE")
    proj = {m: deepworks.projection(run.dir, method=m, split="val", seed=lab.seed, max_points=300) for m in ("pca", "tsne")}
    points = {}
    for m, p in proj.items():
        with open(p["csv"]) as f:
            table = list(csv.DictReader(f))
        points[m] = np.array([[float(r["x"]), float(r["y"]), float(r["label"])] for r in table])
    # how well each 2-D map keeps the target: correlation of the first axis... and of the best axis
    order_kept = {m: float(max(abs(np.corrcoef(pt[:, k], pt[:, 2])[0, 1]) for k in (0, 1))) for m, pt in points.items()}

    lab.record(rows=rows, input_columns=len(groups), encoded_features=len(names), test_r2=r2,
               importance=drops, importance_baseline=imp["baseline"],
               features_per_column={k: len(v) for k, v in groups.items()},
               missing_indicators=sum(n.endswith("=missing") for n in names),
               projection_target_correlation=order_kept, projection_dims=proj["pca"]["dims"])

    fig, axes = lab.figure(2, 2, figsize=(14, 10))
    ax = axes[0, 0]
    im = ax.imshow(matrix, cmap="coolwarm", vmin=-2.5, vmax=2.5, aspect="auto")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, f"{v:.1f}" if v not in (0.0, 1.0) else f"{v:.0f}", ha="center", va="center", fontsize=6.5)
    raw = [" ".join(c or "?" for c in cells[r][:5]) for r in picked]
    ax.set_yticks(range(shown), raw, fontsize=7)
    ax.set_title(f"{len(header) - 1} raw columns (left, ? = empty) -> {len(names)} encoded features", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, label="encoded value")
    ax = axes[0, 1]
    cols = ranking[::-1]
    ax.barh(cols, [drops[c] for c in cols], xerr=[imp["columns"][ranking.index(c)]["std_drop"] for c in cols],
            color=["C3" if c in ("income", "size", "city") else "gray" for c in cols])
    ax.set_xlabel(f"drop of validation {imp['metric']} when the column is shuffled")
    ax.set_title(f"permutation importance (red: columns spend depends on; baseline R2 {imp['baseline']:.2f})",
                 fontsize=10)
    for ax, m in zip(axes[1], ("pca", "tsne")):
        pt = points[m]
        sc = ax.scatter(pt[:, 0], pt[:, 1], c=pt[:, 2], cmap="viridis", s=10)
        fig.colorbar(sc, ax=ax, label="spend (standardised)")
        ax.set_title(f"{'PCA' if m == 'pca' else 't-SNE'} of the last hidden layer ({proj[m]['dims']} values, "
                     f"{proj[m]['points']} validation rows)", fontsize=10)
        ax.set_xlabel("component 1")
        ax.set_ylabel("component 2")
    lab.save(fig, "features")

    blocks = ", ".join(f"{c} ({kinds[c]}) -> {len(groups[c])}" for c in groups)
    lab.say(f"The table's {len(groups)} input columns became {len(names)} model features: {blocks}; numbers "
            f"and ordinal codes are standardised (data.scaling), categories one-hot with an 'other' slot, and "
            f"{sum(n.endswith('=missing') for n in names)} columns with empty cells got a '=missing' indicator "
            "after median/most-frequent imputation (data.columns sets a column's kind, order and scaling).")
    lab.say(f"The MLP predicts spend with test R2 {r2:.3f}. Shuffling a column's values lowers the validation R2 by "
            + ", ".join(f"{drops[c]:.3f} ({c})" for c in ranking)
            + f": the top three, {', '.join(ranking[:3])}, "
            + ("are the columns spend was built from, in the order of their weight (income, size, city)"
               if ranking[:3] == ["income", "size", "city"] else
               "are the columns spend was built from, but not in the order of their weight (income, size, city)"
               if set(ranking[:3]) == {"income", "size", "city"} else
               "are not just the columns spend was built from (income, size, city, in the order of their weight)")
            + "; age and noise were not used, so any drop they show is noise.")
    together = min(order_kept.values()) >= 0.7
    lab.say(f"PCA and t-SNE of the last hidden layer ({proj['pca']['dims']} values per row): the best axis "
            f"correlates with spend at {order_kept['pca']:.2f} (PCA) and {order_kept['tsne']:.2f} (t-SNE)"
            + (", so both maps put rows of similar spend together." if together else
               "; a map whose best axis correlates weakly does not line rows up by spend."))
