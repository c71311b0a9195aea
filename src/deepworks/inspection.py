"""``deepworks inspect CONFIG``: the model a config describes, built for its data's shape and summarized.

It sits beside the pipeline, above the data, model and transfer layers it combines: the shape of
a built-in dataset or an image folder is known without loading pixels, but a text or series
table has its vocabulary and windows only once the pipeline has prepared it. The per-layer table
itself is :func:`deepworks.models.summary.summarize`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deepworks.config import Config, data_kind, load_config
from deepworks.data.datasets import as_image_size, list_datasets, load_from_config
from deepworks.data.folders import plan_folder
from deepworks.data.imagelist import plan_image_list
from deepworks.models.registry import model_from_config
from deepworks.models.summary import render_summary, summarize
from deepworks.kinds import choose_model, prepare_data
from deepworks.kinds.table import net_input_shape
from deepworks.transfer import adopt_source, build

# render_summary (defined with summarize, in the model layer) is handed out here too, so that
# `deepworks inspect` finds both halves of its work in one place
__all__ = ["inspect_config", "render_summary"]


def _data_shape(config: Config) -> tuple[tuple[int, ...], int, str]:
    """(input_shape, num_classes, dataset label) as training would see them."""
    d = config.data
    if d.path is None:
        info = next((row for row in list_datasets() if row["name"] == d.dataset), None)
        if info is not None:  # built-in: known without loading
            channels, height, width = (int(s) for s in info["input_shape"])
            if d.image_size is not None:
                height, width = (d.image_size, d.image_size) if isinstance(d.image_size, int) else d.image_size
            if d.channels is not None:
                channels = d.channels
            return (channels, int(height), int(width)), int(info["classes"]), str(d.dataset)
    if d.path is not None and data_kind(d) == "image":
        # an image folder or list: the files' headers give its shape, no pixel is decoded
        size = as_image_size(d.image_size)
        plan = (
            plan_image_list(d.path, image=d.image, target=d.target, group_by=d.group_by, image_size=size,
                            channels=d.channels, resize=d.resize)
            if d.image is not None else plan_folder(d.path, image_size=size, channels=d.channels, resize=d.resize)
        )
        return plan.spec.input_shape, len(plan.classes), str(d.path)
    # a table (or a dataset without listed info): its shape is what it holds
    ds = load_from_config(d)
    return ds.input_shape, len(ds.classes), str(d.path if d.path is not None else d.dataset)


def inspect_config(config: Config | str | Path | Mapping[str, Any], *, device: str = "cpu") -> dict[str, Any]:
    """Build the model a config describes, for its data's shape, and summarize it
    (:func:`~deepworks.models.summary.summarize`).

    A built-in dataset's shape comes from :func:`list_datasets` (nothing is loaded); an image
    folder is loaded to learn its shape. A model that cannot work for that shape raises
    :class:`ShapeError` from the build, naming the block.
    """
    if not isinstance(config, Config):
        config = load_config(config)
    if config.transfer is not None:
        config = adopt_source(config)  # transfer.from: the earlier run's model
    vocab_size = encoder_config = train_size = None
    if data_kind(config.data, config.model) in ("text", "subwords", "embeddings", "series", "table"):
        # text and series tables: the vocabulary and the windows exist only once the data is prepared;
        # a table's features once its encoder is fitted (the network reads them, after TableInput)
        data = prepare_data(config)
        train_size = len(data.train)
        input_shape, num_classes = tuple(data.input_shape), data.task.output_size()
        if data_kind(config.data) == "table":
            input_shape = net_input_shape(input_shape, data.info)
        vocab_size = (data.info.get("input") or {}).get("vocab_size")
        encoder_config = (data.info.get("input") or {}).get("config")  # a pretrained text encoder's, as recorded
        dataset = str(config.data.path if config.data.path is not None else config.data.dataset)
    else:
        input_shape, num_classes, dataset = _data_shape(config)
        if config.data.subset is not None and config.data.subset.classes is not None:
            num_classes = len(config.data.subset.classes)  # data.subset keeps these classes
    config = choose_model(config, input_shape, train_size=train_size)  # no model named: the one the data chooses
    model = model_from_config(config.model, input_shape, num_classes, vocab_size=vocab_size,
                              encoder_config=encoder_config)
    if config.transfer is not None:  # which blocks learn (no weights are loaded to look at the structure)
        model = build(model, config, {"input_shape": list(input_shape)}, load=False)
    summary = summarize(model, input_shape, vocab_size=vocab_size, device=device)
    out = {"model": config.model.name, "dataset": dataset, "num_classes": num_classes, **summary}
    if hasattr(model, "describe"):
        out["transfer"] = model.describe()
    if vocab_size is not None:
        out["vocab_size"] = int(vocab_size)
    return out
