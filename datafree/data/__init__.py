"""Datasets: specs, loaders, normalisation and on-device augmentation."""

from .datasets import (  # noqa: F401
    Batches,
    ImageSplit,
    Source,
    data_roots,
    default_root,
    get_source,
    get_spec,
    imagefolder_source,
    iterate_eval,
    read_idx,
    register_source,
)
from .spec import DatasetSpec, Normalizer  # noqa: F401

from . import segmentation  # noqa: F401, E402  (registers mnist_seg)
