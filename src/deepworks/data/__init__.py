"""The data layer: datasets by name, image folders or CSV files, splits, leakage checks, normalisation
and augmentation of training batches.

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
from deepworks.data.containers import ImageDataset
from deepworks.data.datasets import DATASETS, list_datasets, load_dataset, read_idx
from deepworks.data.folders import FolderStream, StreamedImages, scan_image_folder
from deepworks.data.images import IMAGE_EXTENSIONS, ImageSpec, load_pixels, read_image
from deepworks.data.leakage import DuplicateReport, apply_policy, find_duplicates, one_to_one_columns, sample_hashes
from deepworks.data.loaders import TensorData, ToInput
from deepworks.data.splits import Splits, channel_stats, kfold_indices, normalize, split_dataset, split_indices
from deepworks.data.tabular import load_csv

# The modules that register the folder, csv, image-list, rotten-tomatoes and co2 loaders in DATASETS (folders
# and tabular above, imagelist, text and series here): importing any part of deepworks.data runs this file first,
# so every dataset name is known before load_dataset looks one up.
from deepworks.data import imagelist, memory, series, text  # noqa: E402,F401  (registration)

bind_op_list(("data", "augment"), AUGMENTS)

__all__ = [
    "AUGMENTS",
    "Augment",
    "DATASETS",
    "DuplicateReport",
    "FolderStream",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "ImageSpec",
    "Splits",
    "StreamedImages",
    "TensorData",
    "ToInput",
    "apply_policy",
    "build_augment",
    "channel_stats",
    "find_duplicates",
    "kfold_indices",
    "list_datasets",
    "load_csv",
    "load_dataset",
    "load_pixels",
    "normalize",
    "one_to_one_columns",
    "read_idx",
    "read_image",
    "sample_hashes",
    "scan_image_folder",
    "split_dataset",
    "split_indices",
]
