"""Checkpoints of the reference repositories load strictly and compute the reference's function.

``fixtures/reference_layouts.json`` holds facts recorded from the reference
model classes (CMI, Fast-Datafree, DataFree, DFAD, DAFL) by
``fixtures/make_reference_layouts.py``, which ran their code outside this
repository: the names and shapes of their state dicts, and for one
architecture per family the logits their model computes on a seeded input
after the deterministic weight fill :func:`fill` (float64 and float32).
"""

import collections

import pytest
import torch

from conftest import reference_fixture
from torch import nn

from datafree.errors import CheckpointError, DatafreeError
from datafree.models import create_model, layouts, load_model, load_state, read_checkpoint
from datafree.registry import MODELS

ref, FIXTURE = reference_fixture("reference_layouts.json")
LAYOUTS = FIXTURE["layouts"]


def _id(e):
    return f"{e['arch']}-{e['layout']}-{e['num_classes']}"


def entry(arch, layout="cmi", classes=None):
    return next(
        e
        for e in LAYOUTS
        if e["arch"] == arch and e["layout"] == layout and (classes is None or e["num_classes"] == classes)
    )


def distinct_state(keys):
    """Tensor i holds the value i + 1 everywhere: any swap of two same-shaped tensors shows."""
    return {
        k: (torch.tensor(i + 1) if k.endswith("num_batches_tracked") else torch.full(s, float(i + 1)))
        for i, (k, s) in enumerate(keys)
    }


def test_fixture_covers_every_architecture_we_share():
    shared = set(layouts.FAMILY)
    assert {e["arch"] for e in LAYOUTS} == shared
    assert shared <= set(MODELS)
    assert all(any(e["arch"] == a and e["layout"] == "cmi" for e in LAYOUTS) for a in shared)
    assert {e["arch"] for e in LAYOUTS if e["layout"] == "dafl"} == {"lenet5", "lenet5_half"}
    built = " ".join(b for e in LAYOUTS for b in e["built_by"])
    for repo in (
        "zju-vipa/CMI",
        "zju-vipa/Fast-Datafree",
        "ljrprocc/DataFree",
        "VainF/Data-Free-Adversarial",
        "huawei-noah/Efficient-Computing",
    ):
        assert repo in built


@pytest.mark.parametrize("e", LAYOUTS, ids=_id)
def test_reference_state_dict_loads_strictly(e):
    arch = e["arch"]
    model = create_model(arch, e["num_classes"], e["in_channels"], 32)
    state = distinct_state(e["keys"])
    ours = list(layouts.rename(arch, {k: None for k, _ in e["keys"]}, e["layout"]))
    assert ours == list(model.state_dict()), "same names after the rename, in the same order"
    cmi_file = {
        "epoch": 200,
        "arch": arch,
        "state_dict": {"module." + k: v for k, v in state.items()},
        "best_acc1": 95.0,
    }
    for variant in (state, {"state_dict": state}, {"module." + k: v for k, v in state.items()}, cmi_file):
        assert load_state(model, variant, "the reference checkpoint", arch=arch) == e["layout"]
    assert load_state(model, cmi_file, "the reference checkpoint") == e["layout"]  # no arch: any exact layout
    renamed, layout = layouts.to_datafree(arch, cmi_file)  # on its own: detected from the names
    assert layout == e["layout"] and list(renamed) == ours
    own = model.state_dict()
    for i, k in enumerate(ours):
        assert own[k].min() == own[k].max() == i + 1, k


def test_reference_checkpoint_files(tmp_path):
    """A CMI train_scratch.py file (optimizer and scheduler state, DataParallel prefixes) and a DFAD bare file."""
    e = entry("resnet56", classes=100)
    state = {"module." + k: v for k, v in ref.filled_state(e["keys"], torch.float32).items()}
    n = sum(1 for k, _ in e["keys"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    # what torch's SGD and MultiStepLR state_dict() hold (the scheduler's milestones are a Counter)
    optimizer = {
        "state": {i: {"momentum_buffer": torch.zeros(1)} for i in range(n)},
        "param_groups": [
            {
                "lr": 0.1,
                "momentum": 0.9,
                "dampening": 0,
                "weight_decay": 5e-4,
                "nesterov": False,
                "maximize": False,
                "foreach": None,
                "differentiable": False,
                "fused": None,
                "params": list(range(n)),
            }
        ],
    }
    scheduler = {
        "milestones": collections.Counter([120, 150, 180]),
        "gamma": 0.1,
        "base_lrs": [0.1],
        "last_epoch": 200,
        "verbose": False,
        "_step_count": 201,
        "_get_lr_called_within_step": False,
        "_last_lr": [0.0001],
    }
    path = str(tmp_path / "cifar100_resnet56.pth")
    torch.save(
        {
            "epoch": 200,
            "arch": "resnet56",
            "state_dict": state,
            "best_acc1": 72.3,
            "optimizer": optimizer,
            "scheduler": scheduler,
        },
        path,
    )
    model, ckpt = load_model(path)  # architecture from the file, the 100 classes from the classifier's rows
    assert ckpt["arch"] == "resnet56" and model.head.out_features == 100
    assert torch.equal(model.head.weight, state["module.fc.weight"])

    lenet = entry("lenet5", "dafl")
    bare = ref.filled_state(lenet["keys"], torch.float32)
    path = str(tmp_path / "mnist-lenet5.pt")
    torch.save(bare, path)
    model, _ = load_model(path, arch="lenet5", in_channels=1)
    assert torch.equal(model.features[6].weight, bare["conv3.weight"])


def test_a_state_dict_without_num_batches_tracked_loads():
    e = entry("wrn16_1")
    state = {k: v for k, v in distinct_state(e["keys"]).items() if not k.endswith("num_batches_tracked")}
    assert load_state(create_model("wrn16_1"), state, "an old checkpoint", arch="wrn16_1") == "cmi"


# --- the same function --------------------------------------------------------------------------------------
U32, U64 = 2.0**-24, 2.0**-53  # unit roundoff of float32 and float64


def forward_with_rounding_terms(model, x):
    """The logits, and S = the number of roundings one logit goes through along the depth, summed:

    a dot product of length K (a conv of fan-in K = in/groups*kh*kw, a linear of K inputs) plus its bias has
    worst-case relative error gamma_{K+1} ~ (K + 1) u (recursive summation, Higham, Accuracy and Stability of
    Numerical Algorithms, 2nd ed., section 3.1); a batch norm in eval mode is 2 roundings (scale, shift); the global
    average pool sums the H*W values of the last map; ReLU and max-pool are exact; a residual add is 1 more (counted
    in the conv's +1).
    """
    terms, last_map = [], [None]

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            terms.append(m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1] + 1)
        elif isinstance(m, nn.Linear):
            terms.append(m.in_features + 1)
        elif isinstance(m, nn.BatchNorm2d):
            terms.append(2)
        if isinstance(out, torch.Tensor) and out.dim() == 4:
            last_map[0] = out.shape[-2] * out.shape[-1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for h in handles:
            h.remove()
    return y.double(), sum(terms) + last_map[0]


def tolerance(u, rounding_terms, logits):
    """|ours - reference| <= u * S * max|logit|.

    To first order the relative errors of the roundings add up (sum_l gamma_{K_l}), each reaching the logits with
    gain about 1 through batch-normalised layers, on values bounded by the logits' scale. The gain-1 assumption is
    what the margin check below tests: the reference's own float32 run (recorded in the fixture) must come out 20
    times inside the bound.
    """
    return u * rounding_terms * float(logits.abs().max())


@pytest.mark.parametrize("r", FIXTURE["logits"], ids=lambda r: f"{r['arch']}-{r['layout']}")
def test_logits_match_the_reference(r):
    e = entry(r["arch"], r["layout"], r["num_classes"])
    x = ref.make_input(r["in_channels"])
    assert list(x.shape) == r["input"]["shape"]
    assert ref.checksum([x]) == pytest.approx(r["input"]["checksum"], rel=1e-12)
    want = torch.tensor(r["float64"], dtype=torch.float64)
    model = create_model(r["arch"], r["num_classes"], r["in_channels"], 32).eval()
    filled = ref.filled_state(e["keys"])  # float64; the float32 fill is its rounding (fill() casts)
    assert ref.checksum(filled.values()) == pytest.approx(r["fill_checksum"], rel=1e-12)
    errors = {}
    for dtype, u in ((torch.float64, U64), (torch.float32, U32)):
        model.to(dtype)
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in filled.items()}
        assert load_state(model, state, "the reference", arch=r["arch"]) == r["layout"]
        got, terms = forward_with_rounding_terms(model, x.to(dtype))
        tol = tolerance(u, terms, want)
        errors[dtype] = float((got - want).abs().max())
        assert errors[dtype] <= tol, (dtype, errors[dtype], tol)
    # the tolerance holds with margin: the reference code's own float32 rounding is 20x inside it
    assert r["float32_vs_float64_max_abs"] * 20 <= tolerance(U32, terms, want)


def test_the_tolerance_tells_the_two_mobilenets_apart():
    """The same weights in mobilenetv2_cifar (CIFAR strides) are another function, far outside the tolerance."""
    r = next(r for r in FIXTURE["logits"] if r["arch"] == "mobilenetv2")
    e = entry("mobilenetv2")
    want = torch.tensor(r["float64"], dtype=torch.float64)
    cifar = create_model("mobilenetv2_cifar", 10, 3, 32).eval()
    cifar.load_state_dict(layouts.rename("mobilenetv2", ref.filled_state(e["keys"], torch.float32), "cmi"))
    got, terms = forward_with_rounding_terms(cifar, ref.make_input(3).float())
    assert float((got - want).abs().max()) > 100 * tolerance(U32, terms, want)


def test_the_two_mobilenets():
    x = torch.randn(1, 3, 32, 32)
    ref_net, cifar = create_model("mobilenetv2").eval(), create_model("mobilenetv2_cifar").eval()
    assert ref_net.forward_features(x).shape[-2:] == (1, 1) and cifar.forward_features(x).shape[-2:] == (4, 4)
    assert {k: v.shape for k, v in ref_net.state_dict().items()} == {k: v.shape for k, v in cifar.state_dict().items()}
    assert isinstance(ref_net.dropout, nn.Dropout) and ref_net.dropout.p == 0.2
    assert isinstance(cifar.dropout, nn.Identity)


# --- a checkpoint that does not fit: one line, the likely cause and the fix ----------------------------------------
def _state(arch, layout="cmi", classes=None):
    return distinct_state(entry(arch, layout, classes)["keys"])


CAUSES = [
    # (model arch, classes, channels, size, state, what the message must say)
    (
        "resnet56",
        10,
        3,
        32,
        lambda: _state("resnet56", classes=100),
        ["the checkpoint has 100 classes, the dataset has 10", "dataset it was trained for"],
    ),
    ("lenet5", 10, 3, 32, lambda: _state("lenet5"), ["takes 1-channel images, the dataset has 3", "1-channel images"]),
    (
        "wrn16_2",
        10,
        3,
        32,
        lambda: _state("wrn40_2", classes=100),
        ["are a wrn40_2 in the cmi layout", "100 classes", "teacher_arch=wrn40_2"],
    ),
    (
        "resnet8",
        10,
        3,
        32,
        lambda: create_model("resnet20").state_dict(),
        ["are a resnet20 in the datafree layout", "teacher_arch=resnet20"],
    ),
    (
        "mobilenetv2_cifar",
        10,
        3,
        32,
        lambda: _state("mobilenetv2"),
        ["are a mobilenetv2 in the cmi layout", "teacher_arch=mobilenetv2"],
    ),
    (
        "resnet8",
        10,
        1,
        32,
        lambda: _state("lenet5", "dafl"),  # another naming scheme: a known layout of another arch
        ["are a lenet5 in the dafl layout", "teacher_arch=lenet5"],
    ),
    (
        "resnet8",
        10,
        3,
        32,
        lambda: {"encoder.0.weight": torch.zeros(16, 3, 3, 3), "fc.weight": torch.zeros(10, 16)},
        [
            "follow no layout known for resnet8 (datafree, cmi)",
            "(1 of 56 names match)",
            "'encoder.0.weight'",
            "teacher_arch=<name>",
        ],
    ),
    (
        "lenet5",
        10,
        1,
        8,
        lambda: _state("lenet5", "dafl"),
        ["shapes are those of lenet5 for 32x32 images", "built for 8x8"],
    ),
]


@pytest.mark.parametrize(
    "arch,classes,channels,size,make,says",
    CAUSES,
    ids=[
        "classes",
        "channels",
        "arch-cmi",
        "arch-ours",
        "mobilenet-strides",
        "other-layout",
        "no-layout",
        "image-size",
    ],
)
def test_a_checkpoint_that_does_not_fit_says_why(arch, classes, channels, size, make, says):
    model = create_model(arch, classes, channels, size)
    with pytest.raises(CheckpointError) as err:
        load_state(model, make(), "checkpoint 'teacher.pth'", arch=arch, image_size=size)
    msg = str(err.value)
    assert isinstance(err.value, DatafreeError) and "\n" not in msg
    assert msg.startswith(f"checkpoint 'teacher.pth' does not fit the model {arch}") and "Fix:" in msg
    for s in says:
        assert s in msg, msg


def test_a_whole_pickled_model_is_refused_with_the_way_out(tmp_path):
    """DAFL's teacher-train.py saves torch.save(net, ...): weights_only loading refuses it, the message says how
    to re-save its state_dict()."""
    path = str(tmp_path / "teacher")
    torch.save(nn.Sequential(nn.Linear(2, 2)), path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    msg = str(err.value)
    assert "\n" not in msg and "DAFL" in msg and "state_dict()" in msg and "weights_only=False" in msg
