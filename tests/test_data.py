import os

import pytest
import torch

from conftest import SHARED_MNIST
from datafree.data import Batches, get_source, get_spec, iterate_eval
from datafree.errors import DataNotFoundError, UnknownNameError


def test_digits_split_and_spec():
    src = get_source("digits")
    tr, te = src.load("train"), src.load("test")
    assert len(tr) == 1437 and len(te) == 360
    assert tr.images.dtype == torch.uint8 and tr.images.shape[1:] == (1, 8, 8)
    s = src.spec
    assert (s.channels, s.size, s.num_classes) == (1, 8, 10)


def test_batches_shuffle_augment_and_state(tmp_path):
    src = get_source("digits")
    b = Batches(src.load("train"), src.spec, "cpu", train=True)
    x, y = b.sample(100)
    assert x.shape == (100, 1, 8, 8) and y.shape == (100,)
    state = b.state_dict()
    torch.manual_seed(1)
    nxt = b.sample(5)[1]
    b2 = Batches(src.load("train"), src.spec, "cpu", train=True)
    b2.load_state_dict(state)
    torch.manual_seed(1)
    assert torch.equal(b2.sample(5)[1], nxt)
    n = sum(y.numel() for _, y in iterate_eval(src.load("test"), src.spec, 64, "cpu"))
    assert n == 360


def test_unknown_dataset_and_missing_files(tmp_path, monkeypatch):
    with pytest.raises(UnknownNameError, match="cifar10"):
        get_spec("cifar11")
    monkeypatch.delenv("DATAFREE_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError) as e:
        get_source("cifar100").load("train", str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert "cifar-100-python" in msg and str(tmp_path / "nowhere") in msg and "datafree data download" in msg


def test_cifar_shaped_tensors_flow_through_the_models():
    from datafree.models import create_model

    spec = get_spec("cifar10")
    x = torch.rand(4, *spec.shape)
    m = create_model("resnet8", spec.num_classes, spec.channels, spec.size)
    assert m(x).shape == (4, 10)


def test_imagefolder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("cat", "dog"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(d / f"{i}.png")
    src = get_source(f"imagefolder:{tmp_path}")
    assert src.spec.num_classes == 2 and src.spec.size == 20
    tr = src.load("train")
    assert tr.images.shape == (6, 3, 20, 20) and sorted(set(tr.labels.tolist())) == [0, 1]


@pytest.mark.skipif(not os.path.isdir(SHARED_MNIST), reason=f"real MNIST files not found at {SHARED_MNIST}")
def test_mnist_real_files(tmp_path):
    """The real MNIST files in ../shared/data/mnist load with the right sizes, and a teacher learns them."""
    src = get_source("mnist")
    root = os.path.dirname(SHARED_MNIST)
    tr, te = src.load("train", root), src.load("test", root)
    assert len(tr) == 60000 and len(te) == 10000
    assert tr.images.shape[1:] == (1, 32, 32)
    assert torch.bincount(te.labels).tolist()[:3] == [980, 1135, 1032]
    from datafree.train import train_teacher

    entry = train_teacher(
        "mnist",
        "lenet5_half",
        {
            "epochs": 1,
            "ep_steps": 150,
            "batch_size": 128,
            "data_root": root,
            "progress": False,
            "optim": {"name": "adam", "lr": 3e-3, "weight_decay": 0},
            "out": str(tmp_path / "t"),
        },
        zoo=str(tmp_path / "zoo"),
        log=lambda *a: None,
    )
    assert entry["accuracy"] > 90
