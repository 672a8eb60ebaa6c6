"""DAFL: the generator's loss in the form of DAFL's code, and each compared cell's protocol and generator."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from datafree.methods import resolve
from datafree.data.datasets import get_spec
from datafree.errors import ConfigError
from datafree.models import create_model
from datafree.registry import SYNTHESIZERS
from datafree.synthesis.base import Context


def _synth(dataset="digits", teacher="lenet5", **params):
    spec = get_spec(dataset)
    torch.manual_seed(0)
    t = create_model(teacher, spec.num_classes, spec.channels, spec.size).eval().requires_grad_(False)
    s = create_model("lenet5_half", spec.num_classes, spec.channels, spec.size)
    return SYNTHESIZERS.build("dafl", Context(t, s, spec, "cpu"), **params)


@pytest.mark.parametrize("ie_log", ["10", "e"])
def test_generator_loss_is_the_reference_formula(ie_log):
    # DAFL-train.py:176-180: oh * CE(t, argmax t) + ie * sum p log10 p + a * (-mean |f|), p the batch-mean softmax;
    # the CMI repository's generative.py:66-73 takes the natural log instead.
    synth = _synth(synthesis_batch_size=8, nz=8, ngf=8, oh=0.7, act=0.3, ie=5.0, ie_log=ie_log)
    x = torch.randn(8, 1, 32, 32)
    loss, logs = synth.generator_loss(x, None)
    with torch.no_grad():
        t, f = synth.ctx.teacher(x, return_features=True)
    t, f = t.double(), f.double()
    p = F.softmax(t, 1).mean(0)
    log = torch.log10 if ie_log == "10" else torch.log
    expected = (0.7 * F.cross_entropy(t, t.argmax(1)) + 5.0 * (p * log(p)).sum() - 0.3 * f.abs().mean()).item()
    # the same teacher outputs summed in float64: each term is O(1), float32 rounding ~1e-6 relative
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert logs["ie"].item() == pytest.approx((p * log(p)).sum().item(), rel=1e-5, abs=1e-6)


def test_log10_is_the_natural_log_term_over_ln10():
    x = torch.randn(8, 1, 32, 32)
    ten = _synth(synthesis_batch_size=8, nz=8, ngf=8, ie_log="10").generator_loss(x, None)[1]["ie"]
    e = _synth(synthesis_batch_size=8, nz=8, ngf=8, ie_log="e").generator_loss(x, None)[1]["ie"]
    assert (e / ten).item() == pytest.approx(math.log(10.0), rel=1e-5)


def test_unknown_log_base_is_a_config_error():
    with pytest.raises(ConfigError, match="ie_log"):
        resolve({"method": "dafl", "dataset": "digits"}, {"synth": {"ie_log": "2"}})


def _layers(gen):
    convs = [m for m in gen.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in gen.modules() if isinstance(m, nn.BatchNorm2d) and m.affine]
    return convs, bns


def _generator_for(dataset, teacher, student, method="dafl"):
    cfg = resolve({"method": method, "dataset": dataset, "teacher": teacher, "student": student})
    spec = get_spec(dataset)
    synth = SYNTHESIZERS.get("dafl")
    params = dict(cfg.synth)
    return cfg, synth.build_generator(
        type("S", (), {"cfg": synth.Config(**params), "ctx": type("C", (), {"spec": spec})})()
    )


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_cmi_cells_use_the_large_generator(dataset):
    # CMI datafree_kd.py:256-257: LargeGenerator(nz=512, ngf=64); models/generator.py:42-66: BatchNorm eps 1e-5,
    # inner convolutions without bias (the output convolution keeps its bias), 4 * ngf channels after the projection
    cfg, gen = _generator_for(dataset, "wrn40_2", "wrn16_1")
    convs, bns = _layers(gen)
    assert cfg.synth["nz"] == 512 and cfg.distill["T"] == 1.0 and cfg.synth["ie_log"] == "e"
    assert [c.bias is None for c in convs] == [True, True, False]
    assert [b.eps for b in bns[1:]] == [1e-5, 1e-5]
    assert gen.project.out_features == 4 * 64 * 8 * 8


@pytest.mark.parametrize("dataset,oh,ie,act", [("cifar10", 0.05, 5.0, 0.01), ("cifar100", 0.5, 20.0, 0.1)])
def test_resnet34_resnet18_runs_the_dafl_readme_command(dataset, oh, ie, act):
    # DAFL README.md:29 / :35 and DAFL-train.py: its own generator (biased convolutions, BatchNorm2d(C, 0.8), 128 wide),
    # 2000 epochs x 120 iterations of batch 1024, SGD 0.1 (wd 5e-4) x0.1 at 800 and 1600, KD at T = 1, log10 entropy
    cfg, gen = _generator_for(dataset, "resnet34", "resnet18")
    convs, bns = _layers(gen)
    s = cfg.synth
    assert (s["nz"], s["lr_g"], s["oh"], s["ie"], s["act"], s["ie_log"]) == (1000, 0.02, oh, ie, act, "10")
    assert (cfg.epochs, cfg.ep_steps, cfg.kd_steps, cfg.batch_size, cfg.distill["T"]) == (2000, 120, 1, 1024, 1.0)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.schedule) == ("sgd", 0.1, 5e-4, "multistep")
    assert list(cfg.optim.milestones) == [800, 1600] and cfg.optim.gamma == 0.1
    assert all(c.bias is not None for c in convs) and [b.eps for b in bns[1:]] == [0.8, 0.8]
    assert gen.project.out_features == 128 * 8 * 8 and gen.output == "tanh_bn"
    # the CMI protocol on that pair stays available as the preset dafl:cmi
    cmi, _ = _generator_for(dataset, "resnet34", "resnet18", method="dafl:cmi")
    assert (cmi.synth["generator"], cmi.synth["nz"], cmi.epochs, cmi.kd_steps) == ("dcgan_large", 512, 200, 5)


def test_mnist_is_dafl_code_defaults():
    cfg, gen = _generator_for("mnist", "lenet5", "lenet5_half")
    s = cfg.synth
    assert (s["nz"], s["lr_g"], s["ie_log"], s["bn_eps"], s["conv_bias"], cfg.batch_size) == (
        100,
        0.2,
        "10",
        0.8,
        True,
        512,
    )
    assert (cfg.distill["T"], cfg.epochs, cfg.ep_steps) == (1.0, 200, 120)
