"""The dataset registry: a spec and a loader per dataset.

Small and CIFAR-sized datasets load once into a uint8 tensor (``ImageSplit``)
that lives on the run's device; batches are drawn and augmented there.
Image folders (Tiny-ImageNet, ImageNet) stream through a DataLoader.

Data roots are searched in order: ``--data-root``, ``$DATAFREE_DATA``,
``./data``, ``~/.cache/datafree/data``. Nothing is downloaded at run time;
``datafree data download NAME`` does that explicitly on a networked machine.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, replace
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from ..errors import DataNotFoundError, UnknownNameError
from ..registry import DATASETS, load_builtins
from .augment import paired_crop_flip, standard_augment
from .spec import DatasetSpec, Normalizer

# --------------------------------------------------------------------------- roots


def data_roots(explicit: Optional[str] = None) -> List[str]:
    roots = []
    if explicit:
        roots.append(explicit)
    if os.environ.get("DATAFREE_DATA"):
        roots.append(os.environ["DATAFREE_DATA"])
    roots += ["data", os.path.join(os.path.expanduser("~"), ".cache", "datafree", "data")]
    seen, out = set(), []
    for r in roots:
        a = os.path.abspath(os.path.expanduser(r))
        if a not in seen:
            seen.add(a)
            out.append(a)
    return out


def default_root(explicit: Optional[str] = None) -> str:
    return data_roots(explicit)[0]


# --------------------------------------------------------------------------- splits


@dataclass
class ImageSplit:
    """A split held as uint8 images (N, C, H, W) and int64 labels, on any device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device) -> "ImageSplit":
        return ImageSplit(self.images.to(device), self.labels.to(device))

    def subset(self, index: torch.Tensor) -> "ImageSplit":
        index = index.to(self.images.device)
        return ImageSplit(self.images[index], self.labels[index])


class Source:
    """A registered dataset: its spec and how to load a split."""

    def __init__(
        self,
        spec: DatasetSpec,
        loader: Callable[[str, str], ImageSplit],
        files_hint: str,
        download: Optional[Callable[[str], None]] = None,
    ):
        self.spec = spec
        self._loader = loader
        self.files_hint = files_hint
        self._download = download

    def load(self, split: str, root: Optional[str] = None) -> ImageSplit:
        """Load ``train`` or ``test`` from the first data root that has the files."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        roots = data_roots(root) if self.spec.name not in ("digits",) else [""]
        for r in roots:
            try:
                data = self._loader(r, split)
            except FileNotFoundError:
                continue
            return data
        where = "\n  ".join(roots)
        raise DataNotFoundError(
            f"dataset {self.spec.name!r} ({split}) was not found. Looked under:\n  {where}\n"
            f"It must be laid out as: {self.files_hint}\n"
            f"Put the files there (or point --data-root / DATAFREE_DATA at the folder that holds them)"
            + (
                f"; on a machine with network access `datafree data download {self.spec.name} --data-root DIR` "
                "fetches them."
                if self._download
                else "."
            )
        )

    def download(self, root: str) -> None:
        if not self._download:
            raise DataNotFoundError(f"dataset {self.spec.name!r} cannot be downloaded automatically: {self.files_hint}")
        self._download(root)


def get_source(name: str) -> Source:
    if name.startswith("imagefolder:"):
        return imagefolder_source(name.split(":", 1)[1])

    load_builtins()
    return DATASETS.get(name)


def get_spec(name: str) -> DatasetSpec:
    return get_source(name).spec


def register_source(spec: DatasetSpec, loader, files_hint: str, download=None) -> Source:
    src = Source(spec, loader, files_hint, download)
    DATASETS.register(spec.name, src)
    return src


# --------------------------------------------------------------------------- digits


def _load_digits(_root: str, split: str) -> ImageSplit:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = d.target.astype(np.int64)
    order = np.random.RandomState(0).permutation(len(labels))  # fixed split: 1437 train / 360 test
    n_test = 360
    idx = order[n_test:] if split == "train" else order[:n_test]
    return ImageSplit(torch.from_numpy(images[idx].copy()), torch.from_numpy(labels[idx].copy()))


register_source(
    DatasetSpec("digits", 1, 8, 10, (0.3053,), (0.3760,), augment="crop", train_size=1437),
    _load_digits,
    "nothing: scikit-learn's built-in digits ship with scikit-learn",
)

# --------------------------------------------------------------------------- MNIST family

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally .gz), the format of the MNIST family."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(root: str, folders: List[str], stem: str) -> str:
    for folder in folders:
        for name in (stem, stem + ".gz"):
            p = os.path.join(root, folder, name)
            if os.path.isfile(p):
                return p
    raise FileNotFoundError(stem)


def _mnist_loader(tv_folder: str, alias: str, size: int):
    def load(root: str, split: str) -> ImageSplit:
        folders = [os.path.join(tv_folder, "raw"), alias, tv_folder, ""]
        img_file, lab_file = _MNIST_FILES[split]
        images = torch.from_numpy(read_idx(_find_idx(root, folders, img_file)).copy())[:, None]
        labels = torch.from_numpy(read_idx(_find_idx(root, folders, lab_file)).astype(np.int64))
        if images.shape[-1] != size:
            from torchvision.transforms.functional import resize

            images = resize(images, [size, size], antialias=True)
        return ImageSplit(images.contiguous(), labels)

    return load


def _tv_download(cls_name: str, **kw):
    def download(root: str) -> None:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        if "split" in kw:
            for split in kw["split"]:
                cls(root, split=split, download=True)
        else:
            for train in (True, False):
                cls(root, train=train, download=True)

    return download


for _name, _folder, _mean, _std, _cls in [
    ("mnist", "MNIST", 0.1307, 0.3081, "MNIST"),
    ("fashion_mnist", "FashionMNIST", 0.2860, 0.3530, "FashionMNIST"),
    ("kmnist", "KMNIST", 0.1918, 0.3483, "KMNIST"),
]:
    register_source(
        # 32x32 as in DAFL (MNIST resized so that LeNet-5 sees its original input size)
        DatasetSpec(_name, 1, 32, 10, (_mean,), (_std,), augment="none", train_size=60000),
        _mnist_loader(_folder, _name, 32),
        f"<root>/{_folder}/raw/ (torchvision layout) or <root>/{_name}/ holding the four IDX files "
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte (.gz or extracted)",
        _tv_download(_cls),
    )


def read_mnist(root: str, split: str) -> ImageSplit:
    """MNIST's raw 28x28 digits of a split, from one data root (``FileNotFoundError`` when they are not there):
    what the segmentation test bed (:mod:`datafree.data.segmentation`) draws its canvases from."""
    return _mnist_loader("MNIST", "mnist", 28)(root, split)


# --------------------------------------------------------------------------- CIFAR, SVHN, STL-10


def _tv_loader(cls_name: str, size: int, split_kw: bool = False):
    def load(root: str, split: str) -> ImageSplit:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        try:
            if split_kw:
                ds = cls(root, split=split, download=False)
            else:
                ds = cls(root, train=(split == "train"), download=False)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
            raise FileNotFoundError(str(e)) from e
        data = ds.data
        images = torch.as_tensor(np.asarray(data))
        if images.ndim == 4 and images.shape[-1] in (1, 3):  # NHWC (CIFAR)
            images = images.permute(0, 3, 1, 2)
        labels = torch.as_tensor(
            np.asarray(getattr(ds, "targets", None) if hasattr(ds, "targets") else ds.labels), dtype=torch.int64
        )
        if images.shape[-1] != size:
            from torchvision.transforms.functional import resize

            images = resize(images, [size, size], antialias=True)
        return ImageSplit(images.contiguous(), labels)

    return load


register_source(
    DatasetSpec("cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), train_size=50000),
    _tv_loader("CIFAR10", 32),
    "<root>/cifar-10-batches-py/ (the extracted cifar-10-python.tar.gz from "
    "https://www.cs.toronto.edu/~kriz/cifar.html)",
    _tv_download("CIFAR10"),
)
register_source(
    DatasetSpec("cifar100", 3, 32, 100, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), train_size=50000),
    _tv_loader("CIFAR100", 32),
    "<root>/cifar-100-python/ (the extracted cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html)",
    _tv_download("CIFAR100"),
)
register_source(
    DatasetSpec(
        "svhn", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), augment="crop", train_size=73257
    ),
    _tv_loader("SVHN", 32, split_kw=True),
    "<root>/train_32x32.mat and <root>/test_32x32.mat (http://ufldl.stanford.edu/housenumbers/)",
    _tv_download("SVHN", split=("train", "test")),
)
register_source(
    DatasetSpec("stl10", 3, 96, 10, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), train_size=5000),
    _tv_loader("STL10", 96, split_kw=True),
    "<root>/stl10_binary/ (the extracted stl10_binary.tar.gz from https://cs.stanford.edu/~acoates/stl10/)",
    _tv_download("STL10", split=("train", "test")),
)

# --------------------------------------------------------------------------- image folders

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _folder_split_dir(path: str, split: str) -> str:
    names = ["train"] if split == "train" else ["val", "test"]
    for n in names:
        d = os.path.join(path, n)
        if os.path.isdir(d):
            return d
    raise FileNotFoundError(os.path.join(path, names[0]))


def _load_folder(path: str, split: str, size: int) -> ImageSplit:
    """Decode an ImageFolder split into memory at ``size`` x ``size`` (Tiny-ImageNet scale)."""
    import torchvision

    ds = torchvision.datasets.ImageFolder(_folder_split_dir(path, split))
    return decode_images(ds.samples, size)


def decode_images(samples: List[Tuple[str, int]], size: int) -> ImageSplit:
    """``(path, label)`` pairs (an ImageFolder's ``samples``) decoded as RGB uint8 at ``size`` x ``size``:
    the shorter side resized to ``size``, then a centre crop."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    images = torch.empty((len(samples), 3, size, size), dtype=torch.uint8)
    labels = torch.empty(len(samples), dtype=torch.int64)
    for i, (p, y) in enumerate(samples):
        with Image.open(p) as im:
            img = im.convert("RGB")
        if img.size != (size, size):
            img = TF.center_crop(TF.resize(img, size), size)
        images[i] = TF.pil_to_tensor(img)
        labels[i] = y
    return ImageSplit(images, labels)


def imagefolder_source(path: str, size: Optional[int] = None, name: Optional[str] = None) -> Source:
    """``imagefolder:<path>``: ``<path>/train/<class>/*`` and ``<path>/val/<class>/*``.

    Images are decoded once into memory at ``size`` (the size of the first
    image when not given). Classes are the sub-folders, sorted.
    """
    path = os.path.abspath(os.path.expanduser(path))
    train_dir = os.path.join(path, "train")
    hint = (
        f"{path}/train/<class>/<image> and {path}/val/<class>/<image> (torchvision ImageFolder layout; "
        "for Tiny-ImageNet move val/images into per-class folders with val_annotations.txt)"
    )
    if not os.path.isdir(train_dir):
        spec = DatasetSpec(name or f"imagefolder:{path}", 3, size or 64, 0, IMAGENET_MEAN, IMAGENET_STD)
        return Source(spec, lambda r, s: (_ for _ in ()).throw(FileNotFoundError(train_dir)), hint)
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    if size is None:
        size = _first_image_size(train_dir, classes)
    spec = DatasetSpec(
        name or f"imagefolder:{path}", 3, size, len(classes), IMAGENET_MEAN, IMAGENET_STD, augment="crop_flip"
    )
    return Source(spec, lambda _r, split: _load_folder(path, split, size), hint)


def _first_image_size(train_dir: str, classes: List[str]) -> int:
    from PIL import Image

    for c in classes:
        for e in os.scandir(os.path.join(train_dir, c)):
            if e.is_file():
                with Image.open(e.path) as im:
                    return min(im.size)
    return 64


def _tiny_loader(root: str, split: str) -> ImageSplit:
    path = os.path.join(root, "tiny-imagenet-200")
    if not os.path.isdir(os.path.join(path, "train")):
        raise FileNotFoundError(path)
    return _load_folder(path, split, 64)


register_source(
    DatasetSpec("tiny_imagenet", 3, 64, 200, IMAGENET_MEAN, IMAGENET_STD, train_size=100000),
    _tiny_loader,
    "<root>/tiny-imagenet-200/train/<wnid>/... and <root>/tiny-imagenet-200/val/<wnid>/... "
    "(val re-arranged into class folders from val_annotations.txt)",
)

# --------------------------------------------------------------------------- batches


class ShuffledPasses:
    """Indices 0..n-1 in random order, pass after pass (a new permutation each pass), resumable."""

    def __init__(self, n: int, device):
        self.n = int(n)
        self.device = torch.device(device)
        self._perm: Optional[torch.Tensor] = None
        self._pos = 0

    def next(self, k: int) -> torch.Tensor:
        out = []
        while k > 0:
            if self._perm is None or self._pos >= len(self._perm):
                self._perm = torch.randperm(self.n).to(self.device)
                self._pos = 0
            take = min(k, len(self._perm) - self._pos)
            out.append(self._perm[self._pos : self._pos + take])
            self._pos += take
            k -= take
        return torch.cat(out)

    def state_dict(self) -> Dict:
        return {"perm": None if self._perm is None else self._perm.cpu(), "pos": self._pos}

    def load_state_dict(self, state: Dict) -> None:
        self._perm = None if state["perm"] is None else state["perm"].to(self.device)
        self._pos = int(state["pos"])


class Batches:
    """Draws normalised (and optionally augmented) batches from an ImageSplit on its device.

    ``train=True``: shuffled epochs without replacement, reshuffled when
    exhausted, standard augmentation. ``train=False``: one ordered pass.
    The shuffle state is part of :meth:`state_dict` so a resumed run continues
    where it stopped.
    """

    def __init__(self, split: ImageSplit, spec: DatasetSpec, device, train: bool, augment: Optional[str] = None):
        self.split = split.to(device)
        self.spec = spec
        self.device = torch.device(device)
        self.train = train
        self.norm = Normalizer(spec, self.device)
        kind = augment or spec.augment
        #: a segmentation set's crop and flip move the frame and its map together (paired_crop_flip)
        self.paired = train and spec.task == "segmentation" and kind == "seg_crop_flip"
        self.augment = standard_augment(kind, spec.size) if train and not self.paired else None
        self.order = ShuffledPasses(len(self.split), self.device)

    def __len__(self) -> int:
        return len(self.split)

    def sample(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        idx = self.order.next(n)
        x, y = self.split.images[idx], self.split.labels[idx]
        if self.paired:
            x, y = paired_crop_flip(x, y, self.spec.size)
        x = x.float().div_(255.0)
        if self.augment is not None:
            x = self.augment(x)
        return self.norm(x), y.long()  # a segmentation map is kept as uint8

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        raise TypeError("use Batches.sample(n) for training or iterate_eval() for evaluation")

    def state_dict(self) -> Dict:
        return self.order.state_dict()

    def load_state_dict(self, state: Dict) -> None:
        self.order.load_state_dict(state)


def iterate_eval(
    split: ImageSplit, spec: DatasetSpec, batch_size: int, device
) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Ordered, normalised, un-augmented batches for evaluation."""
    norm = Normalizer(spec, device)
    for i in range(0, len(split), batch_size):
        x = split.images[i : i + batch_size].to(device, non_blocking=True).float().div_(255.0)
        yield norm(x), split.labels[i : i + batch_size].to(device, non_blocking=True).long()


def spec_with_size(spec: DatasetSpec, n: int) -> DatasetSpec:
    return replace(spec, train_size=n)


def list_datasets() -> List[str]:
    return DATASETS.list()


def unknown_dataset(name: str) -> UnknownNameError:
    return UnknownNameError("dataset", name, DATASETS.list() + ["imagefolder:<path>"])
