"""The data layer: datasets by name, image folders or CSV files, splits, normalisation and
augmentation of training batches.

>>> from deepworks.data import load_dataset, split_dataset
>>> ds = load_dataset("digits")
>>> ds.input_shape
(1, 8, 8)
>>> s = split_dataset(ds, seed=0)
>>> [len(s.train[1]), len(s.val[1]), len(s.test[1])]
[1257, 270, 270]
"""

from deepworks.config import bind_op_list
from deepworks.data.augment import AUGMENTS, Augment, build_augment
from deepworks.data.datasets import DATASETS, ImageDataset, list_datasets, load_dataset, read_idx
from deepworks.data.images import IMAGE_EXTENSIONS, read_image, scan_image_folder
from deepworks.data.splits import Splits, channel_stats, normalize, split_dataset
from deepworks.data.tabular import load_csv

bind_op_list(("data", "augment"), AUGMENTS)

__all__ = [
    "AUGMENTS",
    "Augment",
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "Splits",
    "build_augment",
    "channel_stats",
    "list_datasets",
    "load_csv",
    "load_dataset",
    "normalize",
    "read_idx",
    "read_image",
    "scan_image_folder",
    "split_dataset",
]
