"""The segmentation test bed (mnist_seg), the DeepLab pair, and a segmentation run end to end."""

import json
import os

import numpy as np
import pytest
import torch

from conftest import SHARED_MNIST
from datafree.data import get_source
from datafree.data.segmentation import GROW, compose, grow
from datafree.models import create_model
from datafree.tasks import IGNORE_INDEX


def _digits(n=5, seed=0):
    """Fake 28x28 'digits': a filled rectangle of stroke pixels each, at random sizes."""
    rng = np.random.default_rng(seed)
    d = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        h, w = rng.integers(4, 20, 2)
        d[i, 4 : 4 + h, 6 : 6 + w] = 200
        d[i, 3, 6 : 6 + w] = 60  # a faint edge: drawn, but below the stroke threshold
    return d, np.arange(n) % 10


def test_grow_is_a_square_dilation_on_a_larger_array():
    m = np.zeros((5, 5), dtype=bool)
    m[2, 2] = True
    g = grow(m, 2)
    assert g.shape == (9, 9)
    assert g.sum() == 25 and g[2:7, 2:7].all()  # a 5x5 square around the pixel, shifted by the margin


def test_compose_is_deterministic_and_labels_the_grown_objects():
    digits, labels = _digits()
    a_img, a_tgt = compose(digits, labels, 20, seed=3)
    b_img, b_tgt = compose(digits, labels, 20, seed=3)
    c_img, _ = compose(digits, labels, 20, seed=4)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_tgt, b_tgt)
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == a_tgt.shape == (20, 64, 64) and a_tgt.dtype == np.uint8
    assert set(np.unique(a_tgt)) <= {0, IGNORE_INDEX, *(labels + 1).tolist()}
    stroke = a_img >= 128
    assert (a_tgt[stroke] > 0).all() and (a_tgt[stroke] != IGNORE_INDEX).all()  # every stroke pixel is a digit
    assert (a_tgt[a_img == 0] == 0).any()  # and background stays background away from the digits
    # one digit alone: its object is its stroke grown by GROW pixels, ringed by one pixel not scored
    img, tgt = compose(digits[:1], labels[:1], 1, seed=0, max_digits=1)
    s = img[0] >= 128
    obj = grow(s, GROW)[GROW:-GROW, GROW:-GROW]
    ring = grow(s, GROW + 1)[GROW + 1 : -GROW - 1, GROW + 1 : -GROW - 1] & ~obj
    assert np.array_equal(tgt[0] == labels[0] + 1, obj)
    assert np.array_equal(tgt[0] == IGNORE_INDEX, ring)


def test_deeplab_pair_shapes_and_stages():
    for name, params in (("deeplab_tiny", 296_875), ("deeplab_tiny_half", 151_643)):
        m = create_model(name, num_classes=11, in_channels=1, image_size=64).eval()
        assert sum(p.numel() for p in m.parameters()) == params
        x = torch.randn(2, 1, 64, 64)
        assert m(x).shape == (2, 11, 64, 64)
        assert m(torch.randn(2, 1, 48, 40)).shape == (2, 11, 48, 40)  # any size: logits at the input's
        assert len(m.stages()) == 3


def test_ce_leaves_out_the_ignore_index():
    from datafree.data.spec import DatasetSpec
    from datafree.tasks import ignore_index_of

    seg = DatasetSpec("s", 1, 8, 3, (0.5,), (0.5,), task="segmentation", ignore_index=IGNORE_INDEX)
    cls = DatasetSpec("c", 1, 8, 3, (0.5,), (0.5,))
    logits = torch.randn(2, 3, 4, 4)
    y = torch.randint(0, 3, (2, 4, 4))
    y_void = y.clone()
    y_void[:, 0] = IGNORE_INDEX
    ce = torch.nn.functional.cross_entropy
    want = ce(logits.permute(0, 2, 3, 1)[:, 1:].reshape(-1, 3), y[:, 1:].reshape(-1))
    got = ce(logits, y_void, ignore_index=ignore_index_of(seg))
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)  # the same sum over the same pixels
    assert ignore_index_of(cls) == -100


def test_sample_grid_shows_image_and_class_map(tmp_path):
    from PIL import Image

    from datafree.engine.hooks import class_colours, save_sample_grid

    maps = torch.zeros(2, 8, 8, dtype=torch.long)
    maps[0, :4] = 3
    maps[1, 0, 0] = IGNORE_INDEX
    rgb = class_colours(maps)
    assert rgb.shape == (2, 3, 8, 8)
    assert (rgb[0, :, 5, 5] == 0).all() and (rgb[1, :, 0, 0] == 1).all()  # background black, void white
    assert rgb[0, :, 0, 0].sum() > 0
    # a class keeps its colour whatever else the maps hold
    assert torch.equal(class_colours(torch.full((1, 2, 2), 3))[0, :, 0, 0], rgb[0, :, 0, 0])
    path = save_sample_grid(torch.rand(2, 1, 8, 8), maps, str(tmp_path / "g.png"), ncol=2, cell=8)
    plain = save_sample_grid(torch.rand(2, 1, 8, 8), None, str(tmp_path / "p.png"), ncol=2, cell=8)
    (w, h), (pw, ph) = Image.open(path).size, Image.open(plain).size
    assert h == ph and w - pw == 2 * 8  # each tile is the image and, beside it, its map


@pytest.mark.skipif(not os.path.isdir(SHARED_MNIST), reason=f"real MNIST files not found at {SHARED_MNIST}")
def test_mnist_seg_scratch_run_records_miou(tmp_path):
    """The real test bed: canvases drawn from MNIST, the same on every load, and a run that records mIoU."""
    root = os.path.dirname(SHARED_MNIST)
    src = get_source("mnist_seg")
    assert src.spec.task == "segmentation" and src.spec.num_classes == 11
    te = src.load("test", root)
    assert te.images.shape == (2000, 1, 64, 64) and te.labels.shape == (2000, 64, 64)
    assert torch.equal(te.labels, src.load("test", root).labels)
    frac = torch.bincount(te.labels.flatten().long(), minlength=256).float() / te.labels.numel()
    assert 0.70 < frac[0] < 0.85 and 0.02 < frac[IGNORE_INDEX] < 0.06 and (frac[1:11] > 0.005).all()

    from datafree.engine import Engine
    from conftest import tiny

    cfg = tiny(
        "scratch",
        tmp_path / "run",
        dataset="mnist_seg",
        teacher=None,
        student="deeplab_tiny_half",
        data_root=root,
        epochs=1,
        ep_steps=4,
        batch_size=8,
    )
    Engine(cfg).run()
    rec = json.load(open(tmp_path / "run" / "summary.json"))
    assert rec["task"] == "segmentation" and rec["last_acc"] is None
    assert 0 <= rec["last_miou"] <= 100 and 0 <= rec["last_pixel_acc"] <= 100 and rec["last_predicted_classes"] >= 1
    assert any(f.startswith("samples") for f in os.listdir(tmp_path / "run"))


# --------------------------------------------------------------------------- the methods, per pixel


def _toy_source():
    """A 32x32 segmentation source of fake-digit canvases (no MNIST needed): 11 classes, as mnist_seg."""
    from datafree.data import ImageSplit
    from datafree.data.datasets import DATASETS, register_source
    from datafree.data.spec import DatasetSpec

    if "toyseg" in DATASETS:
        return DATASETS.get("toyseg")

    def load(_root, split):
        digits, labels = _digits(10, seed=0 if split == "train" else 1)
        img, tgt = compose(digits, labels, 48, seed=0 if split == "train" else 1, size=32, max_digits=2)
        return ImageSplit(torch.from_numpy(img)[:, None].contiguous(), torch.from_numpy(tgt))

    spec = DatasetSpec("toyseg", 1, 32, 11, (0.1,), (0.25,), augment="none", task="segmentation", ignore_index=255)
    return register_source(spec, load, "none: drawn in the test")


@pytest.fixture
def seg_teacher(tmp_path):
    """A deeplab_tiny teacher file for toyseg (random weights: the runs check plumbing, not accuracy)."""
    from datafree.models import save_model

    src = _toy_source()
    torch.manual_seed(0)
    m = create_model("deeplab_tiny", num_classes=11, in_channels=1, image_size=32)
    path = str(tmp_path / "toyseg_deeplab_tiny.pt")
    save_model(path, m, "deeplab_tiny", "toyseg", src.spec.as_dict())
    return path


SEG_TINY = {
    "dafl": {"synth": {"synthesis_batch_size": 8, "ngf": 8}},
    "dfad": {"synth": {"synthesis_batch_size": 8, "ngf": 4}, "kd_steps": 2, "ep_steps": 4},
    "deepinv": {"synth": {"synthesis_batch_size": 8, "iterations": 2}},
    "fast2": {"synth": {"synthesis_batch_size": 8, "ngf": 8}, "warmup": 0},
    "kd_real": {},
    "scratch": {"teacher": None},
}


@pytest.mark.parametrize("method", sorted(SEG_TINY))
def test_segmentation_methods_run_per_pixel(method, seg_teacher, tmp_path):
    from conftest import tiny
    from datafree.engine import Engine

    over = {"dataset": "toyseg", "teacher": seg_teacher, "student": "deeplab_tiny_half", "samples": 4}
    over = {**over, "epochs": 1, "ep_steps": 2, "batch_size": 8, **SEG_TINY[method]}
    cfg = tiny(method, tmp_path / "run", **over)
    Engine(cfg).run()
    rec = json.load(open(tmp_path / "run" / "summary.json"))
    assert rec["task"] == "segmentation" and rec["status"] == "finished"
    assert 0 <= rec["last_miou"] <= 100 and rec["last_predicted_classes"] >= 1
    if method not in ("scratch", "kd_real"):
        assert rec["images_synthesized"] > 0


def test_methods_that_cannot_serve_segmentation_refuse_in_one_line(seg_teacher, tmp_path):
    from conftest import tiny
    from datafree.errors import ConfigError

    over = {"dataset": "toyseg", "teacher": seg_teacher, "student": "deeplab_tiny_half"}
    with pytest.raises(ConfigError) as e:
        tiny("cmi", tmp_path / "r", **over)
    msg = str(e.value)
    assert "\n" not in msg and "serves classification only" in msg and "toyseg is a segmentation dataset" in msg
    assert "dfad" in msg and "deepinv" in msg and "cmi," not in msg
    with pytest.raises(ConfigError, match="lenet5_half is a classification model"):
        tiny("dfad", tmp_path / "r", dataset="toyseg", teacher=seg_teacher, student="lenet5_half")
    with pytest.raises(ConfigError, match="deeplab_tiny_half is a segmentation model"):
        tiny("dfad", tmp_path / "r", student="deeplab_tiny_half")  # on digits


def test_class_balance_per_pixel_is_over_all_pixels():
    from datafree.synthesis import losses

    t = torch.randn(3, 5, 4, 6)
    flat = t.permute(0, 2, 3, 1).reshape(-1, 5)  # every pixel a sample
    assert torch.allclose(losses.class_entropy(t), losses.class_entropy(flat), rtol=1e-5, atol=1e-6)
    assert torch.allclose(losses.one_hot(t), losses.one_hot(flat), rtol=1e-5, atol=1e-6)
    assert torch.allclose(
        losses.kl_div(t, t.flip(0)), losses.kl_div(flat, t.flip(0).permute(0, 2, 3, 1).reshape(-1, 5))
    )


def test_random_layouts_and_jitter_move_maps_with_images():
    from datafree.synthesis.common import random_layouts
    from datafree.synthesis.deepinv import jitter_flip

    torch.manual_seed(1)
    maps = random_layouts(6, 11, 8, "cpu")
    assert maps.shape == (6, 8, 8) and maps.dtype == torch.long and 0 <= maps.min() and maps.max() < 11
    assert (maps[:, :4, :4] == maps[:, :1, :1]).all()  # 2x2 cells of one class each
    x = maps[:, None].float()  # an "image" equal to its map: the view and the map must stay equal
    for seed in range(5):
        torch.manual_seed(seed)
        view, moved = jitter_flip(x, 0.25, True, maps)
        assert torch.equal(view[:, 0].long(), moved)


def test_dfad_generator_b_and_the_segmentation_loss():
    from datafree.models import create_generator
    from datafree.synthesis import losses

    g = create_generator("dcgan_b", nz=16, ngf=4, img_size=64, nc=1)
    x = g(torch.randn(3, 16))
    assert x.shape == (3, 1, 64, 64) and 0 <= x.min() and x.max() <= 1
    # the reference's layers: linear nz -> 8 ngf x 4 x 4, four transposed convs, a 3x3 conv; BN after each
    n = sum(p.numel() for p in g.parameters())
    ngf = 4
    want = (16 + 1) * 8 * ngf * 16 + 2 * 8 * ngf
    want += sum(16 * a * b * ngf * ngf + 2 * b * ngf for a, b in ((8, 4), (4, 2), (2, 1), (1, 1)))
    want += 9 * ngf * 1 + 1
    assert n == want
    with pytest.raises(ValueError, match="fixed layout"):
        create_generator("dcgan_b", nz=16, ngf=4, img_size=64, nc=1, output="sigmoid")
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    d = (s - t).abs().mean()  # F.l1_loss, as DFAD_nyu_deeplab.py:45 takes it
    assert torch.allclose(-torch.log1p(-losses.adversarial(s, t, kind="l1")), -torch.log(d + 1), rtol=1e-6)


# --------------------------------------------------------------------------- NYUv2 and CamVid, read as DFAD reads them


def _png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _fake_nyuv2(tmp_path, train=(3, 4), test=(1, 2, 9)):
    """Frames and labels of NYUv2's shapes (480x640) in DFAD's layout under ``tmp_path``; label n % 14 on the right
    half of frame n, unlabelled (0) on the left."""
    from scipy.io import savemat

    base = tmp_path / "NYUv2"
    rng = np.random.default_rng(0)
    (base / "nyuv2-meta-data").mkdir(parents=True)
    savemat(
        base / "nyuv2-meta-data" / "splits.mat",
        {"trainNdxs": np.array(train)[:, None], "testNdxs": np.array(test)[:, None]},
    )
    for split, idxs in (("train", train), ("test", test)):
        for n in idxs:
            _png(base / "480_640" / "IMAGE" / f"{n - 1}.png", rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
            label = np.full((480, 640), n % 14, dtype=np.uint8)
            label[:, :320] = 0  # the left half unlabelled
            _png(base / "nyuv2-meta-data" / f"{split}_labels_13" / f"new_nyu_class13_{n:04d}.png", label)
    return str(tmp_path)


def test_nyuv2_reads_dfads_layout_at_its_sizes(tmp_path):
    """Frames of NYUv2's shape (480x640) in DFAD's layout: resized to a shorter side of 256, labels 0 -> 255 and
    k -> k - 1, the split's frames in splits.mat's order; training batches are 128x128 crops of frame and map."""
    from datafree.data.datasets import Batches, iterate_eval

    _fake_nyuv2(tmp_path)
    src = get_source("nyuv2")
    assert (src.spec.task, src.spec.num_classes, src.spec.size, src.spec.mean) == ("segmentation", 13, 128, (0.5,) * 3)
    te = src.load("test", str(tmp_path))
    assert te.images.shape == (3, 3, 256, 341) and te.labels.shape == (3, 256, 341)
    assert [int(te.labels[i, 0, -1]) for i in range(3)] == [0, 1, 8]  # n % 14 - 1 for frames 1, 2, 9
    assert (te.labels[:, :, :100] == IGNORE_INDEX).all()
    x, y = next(iterate_eval(te, src.spec, 2, torch.device("cpu")))
    assert x.shape == (2, 3, 256, 341) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    tr = src.load("train", str(tmp_path))
    torch.manual_seed(0)
    x, y = Batches(tr, src.spec, "cpu", train=True).sample(4)
    assert x.shape == (4, 3, 128, 128) and y.shape == (4, 128, 128) and y.dtype == torch.long
    # missing: the error says where the files go
    with pytest.raises(Exception, match="480_640/IMAGE"):
        src.load("test", str(tmp_path / "elsewhere"))


def test_paired_crop_flip_moves_frame_and_map_together():
    from datafree.data.augment import paired_crop_flip

    torch.manual_seed(0)
    x = torch.arange(2 * 20 * 30).reshape(2, 1, 20, 30).float()
    y = x[:, 0].long()  # a map equal to its frame
    for _ in range(5):
        cx, cy = paired_crop_flip(x, y, 8)
        assert cx.shape == (2, 1, 8, 8) and torch.equal(cx[:, 0].long(), cy)
    with pytest.raises(ValueError, match="smaller than"):
        paired_crop_flip(x, y, 32)


def test_camvid_reads_the_segnet_layout(tmp_path):
    base = tmp_path / "CamVid"
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for i in range(2):
            _png(base / split / f"f{i}.png", rng.integers(0, 256, (360, 480, 3), dtype=np.uint8))
            _png(base / f"{split}annot" / f"f{i}.png", np.full((360, 480), 11 if i else 4, dtype=np.uint8))
    te = get_source("camvid").load("test", str(tmp_path))
    assert te.images.shape == (2, 3, 256, 341) and sorted(te.labels.unique().tolist()) == [4, IGNORE_INDEX]


def test_focal_loss_is_dfads_with_ignored_pixels_in_the_mean():
    """DFAD's utils/utils.py:55-63 focal_loss (gamma 2, ignore 255), restated: CE per pixel with reduction
    'none', times (1 - exp(-CE))^gamma, then the mean over every pixel (ignored ones count as zeros)."""
    from types import SimpleNamespace

    from datafree.distill.base import CrossEntropy

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 5)
    y = torch.randint(0, 4, (2, 5, 5))
    y[:, 0] = IGNORE_INDEX
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none", ignore_index=IGNORE_INDEX)
    want = ((1 - torch.exp(-ce)) ** 2 * ce).sum() / y.numel()
    spec = SimpleNamespace(task="segmentation", ignore_index=IGNORE_INDEX)
    d = CrossEntropy(SimpleNamespace(student=lambda x: logits, teacher=None, spec=spec), focal_gamma=2.0)
    loss, logs = d.loss(None, y)
    assert torch.allclose(loss, want, rtol=1e-6) and "focal" in logs


def test_published_segmentation_protocols_resolve():
    from datafree.methods import resolve

    def cfg(method, ds, student="deeplab_tiny_half"):
        return resolve({"method": method, "dataset": ds, "teacher": "deeplab_tiny", "student": student})

    d = cfg("dfad", "nyuv2")  # DFAD_nyu_deeplab.py --scheduler
    assert (d.batch_size, d.epochs, d.ep_steps, d.kd_steps) == (64, 300, 250, 5)
    assert (d.optim.name, d.optim.lr, d.optim.weight_decay, d.optim.gamma) == ("sgd", 0.1, 5e-5, 0.3)
    assert d.synth["generator"] == "dcgan_b" and d.synth["adv_form"] == "neg_log1p" and d.synth["nz"] == 256
    c = cfg("dfad", "camvid")
    assert c.optim.weight_decay == 5e-4 and c.optim.gamma == 0.1 and c.synth["g_gamma"] == 0.1
    t = resolve({"method": "scratch", "dataset": "nyuv2", "teacher": None, "student": "deeplab_tiny"})
    assert t.distill["focal_gamma"] == 2 and t.optim.lr == 0.05 and list(t.optim.milestones) == [99, 199]
    # the CIFAR DFAD records stay what they were: adv_form unset there
    assert (
        resolve({"method": "dfad", "dataset": "cifar10", "teacher": "resnet34", "student": "resnet18"}).synth[
            "adv_form"
        ]
        is None
    )


@pytest.mark.parametrize("method", ["kd_real", "dfad"])
def test_a_run_on_nyuv2_shaped_data(method, tmp_path):
    """A whole run on frames of NYUv2's shape: 128x128 training crops (kd_real) or 128x128 generated images
    (DFAD's GeneratorB), evaluation on the 256x341 test frames; the test bed's pair at 3 channels keeps it small."""
    from conftest import tiny
    from datafree.engine import Engine
    from datafree.models import save_model

    root = _fake_nyuv2(tmp_path)
    spec = get_source("nyuv2").spec
    teacher = str(tmp_path / "nyuv2_deeplab_tiny.pt")
    save_model(teacher, create_model("deeplab_tiny", 13, 3, 128), "deeplab_tiny", "nyuv2", spec.as_dict())
    over = {"synth": {"ngf": 4, "nz": 16, "synthesis_batch_size": 4}, "kd_steps": 2} if method == "dfad" else {}
    cfg = tiny(
        method,
        tmp_path / "run",
        dataset="nyuv2",
        data_root=root,
        teacher=teacher,
        student="deeplab_tiny_half",
        epochs=1,
        ep_steps=2,
        batch_size=2,
        samples=2,
        **over,
    )
    Engine(cfg).run()
    rec = json.load(open(tmp_path / "run" / "summary.json"))
    assert rec["status"] == "finished" and rec["task"] == "segmentation" and 0 <= rec["last_miou"] <= 100


def test_a_pool_keeps_a_class_per_image_not_a_class_map():
    from datafree.synthesis.pool import DataPool

    pool = DataPool()
    pool.add(torch.rand(3, 1, 8, 8), torch.zeros(3, 8, 8, dtype=torch.long))  # a segmentation target
    pool.add(torch.rand(2, 1, 8, 8), torch.tensor([4, 7]))
    _, labels = pool.all()
    assert labels.tolist() == [-1, -1, -1, 4, 7]
