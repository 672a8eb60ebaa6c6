import pytest
import torch

from datafree.errors import CheckpointError, UnknownNameError
from datafree.models import create_generator, create_model, list_models, load_model, save_model

ZOO = list_models(task="classification")  # the segmenters: tests/test_segmentation.py


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("channels,size", [(1, 32), (3, 32)])
def test_output_and_feature_shapes(name, channels, size):
    torch.manual_seed(0)
    m = create_model(name, num_classes=7, in_channels=channels, image_size=size).eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        logits, feats = m(x, return_features=True)
        fmap = m.forward_features(x)
    assert logits.shape == (2, 7)
    assert feats.shape == (2, m.feature_dim)
    assert fmap.shape[:2] == (2, m.feature_dim)
    assert torch.allclose(m.head(m.pool(fmap)), logits, atol=1e-5)


@pytest.mark.parametrize("name", ["lenet5", "lenet5_half", "lenet5_bn", "resnet8", "wrn16_1", "vgg8"])
def test_small_images(name):
    m = create_model(name, num_classes=10, in_channels=1, image_size=8).eval()
    assert m(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_lenet5_is_the_dafl_architecture_at_32():
    m = create_model("lenet5", 10, 1, 32)
    convs = [l for l in m.features if isinstance(l, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [6, 16, 120] and all(c.kernel_size == (5, 5) for c in convs)
    half = create_model("lenet5_half", 10, 1, 32)
    assert [l.out_channels for l in half.features if isinstance(l, torch.nn.Conv2d)] == [3, 8, 60]
    assert sum(p.numel() for p in m.parameters()) == 61706


def test_lenet5_bn_is_lenet5_with_a_batchnorm_after_each_conv_and_the_hidden_linear():
    from torch import nn

    plain, bn = create_model("lenet5", 10, 1, 32), create_model("lenet5_bn", 10, 1, 32)
    kinds = [type(l).__name__ for l in bn.features]
    assert kinds == [
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "MaxPool2d",
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "MaxPool2d",
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
    ]
    assert [type(l).__name__ for l in bn.head] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    # the same widths: 2 x (6 + 16 + 120 + 84) BN parameters more than LeNet-5
    assert sum(p.numel() for p in bn.parameters()) == 61706 + 2 * (6 + 16 + 120 + 84)
    assert [type(s).__name__ for s in bn.stages()] == [type(s).__name__ for s in plain.stages()]
    assert [s.shape[1:] for s in _stage_outputs(bn)] == [s.shape[1:] for s in _stage_outputs(plain)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 3


def _stage_outputs(model):
    outs = []
    hooks = [s.register_forward_hook(lambda m, i, o: outs.append(o)) for s in model.stages()]
    model.eval()(torch.randn(2, 1, 32, 32))
    for h in hooks:
        h.remove()
    return outs


def test_timm_passthrough():
    m = create_model("timm/resnet10t", num_classes=5, in_channels=1, image_size=32).eval()
    logits, feats = m(torch.randn(2, 1, 32, 32), return_features=True)
    assert logits.shape == (2, 5) and feats.shape == (2, m.feature_dim)
    with pytest.raises(UnknownNameError, match="resnet10t"):
        create_model("timm/resnet10tt")


def test_unknown_model_suggests():
    with pytest.raises(UnknownNameError, match="wrn40_2"):
        create_model("wrn40_3")


@pytest.mark.parametrize("size,nc", [(32, 3), (32, 1), (8, 1), (28, 1), (64, 3)])
@pytest.mark.parametrize("output", ["sigmoid", "tanh_bn"])
def test_generator_shapes(size, nc, output):
    g = create_generator("dcgan", nz=16, ngf=8, img_size=size, nc=nc, output=output)
    x = g(torch.randn(4, 16))
    assert x.shape == (4, nc, size, size)
    if output == "sigmoid":
        assert x.min() >= 0 and x.max() <= 1
    big = create_generator("dcgan_large", nz=16, ngf=8, img_size=size, nc=nc, output=output)
    assert big(torch.randn(2, 16)).shape == (2, nc, size, size)


def test_checkpoint_roundtrip_and_mismatch(tmp_path):
    m = create_model("resnet8", 10, 3, 32)
    path = str(tmp_path / "m.pt")
    save_model(path, m, "resnet8", "cifar10", {"num_classes": 10, "channels": 3, "size": 32})
    m2, ckpt = load_model(path)
    assert ckpt["arch"] == "resnet8"
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(path, arch="resnet20")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model(path, num_classes=100)
    # objects that are not plain tensors are refused by weights_only loading
    bad = str(tmp_path / "pickled.pt")
    torch.save({"state_dict": m.state_dict(), "model": m}, bad)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_model(bad)
