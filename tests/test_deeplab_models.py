"""DFAD's DeepLabV3 pair (``deeplabv3_resnet50``, ``deeplabv3_mobilenet``): the reference's names, shapes and function.

``fixtures/deeplab_reference.json`` holds facts recorded from DFAD's and Fast-Datafree's DeepLabV3 classes by
``fixtures/make_deeplab_reference.py`` (their code ran outside this repository): state-dict names and shapes at
13 classes, and float64 outputs on seeded inputs after the deterministic weight fill of
``fixtures/make_reference_layouts.py``. The ResNet-50 is built a few times only (module-scoped) and run at 64x64.
"""

import pytest
import torch

from conftest import reference_fixture
from torch import nn

from datafree.errors import CheckpointError
from datafree.models import create_model, layouts, list_models, load_model, load_state, model_task
from datafree.models.deeplab import FAST_ASPP_RATES, deeplabv3_mobilenet, deeplabv3_resnet50, mobilenet_schedule

ref, FIXTURE = reference_fixture("deeplab_reference.json")

ARCHS = ("deeplabv3_resnet50", "deeplabv3_mobilenet")
PARAMETERS = {"deeplabv3_resnet50": 39_636_813, "deeplabv3_mobilenet": 5_111_821}  # at 13 classes
BUILDERS = {"deeplabv3_resnet50": deeplabv3_resnet50, "deeplabv3_mobilenet": deeplabv3_mobilenet}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def models():
    """One model of each (13 classes, DFAD's defaults), built once: the tests load states into them."""
    return {arch: create_model(arch, 13, 3, 128).eval() for arch in ARCHS}


def entry(arch, source):
    return next(m for m in FIXTURE["models"] if m["arch"] == arch and m["source"] == source)


def shapes(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def distinct_state(keys):
    """Tensor i holds the value i + 1 everywhere: any swap of two same-shaped tensors shows."""
    return {
        k: (torch.tensor(i + 1) if k.endswith("num_batches_tracked") else torch.full(s, float(i + 1)))
        for i, (k, s) in enumerate(keys)
    }


def test_fixture_names_the_reference_commits():
    src = FIXTURE["sources"]
    assert f"{src['dfad']['repo']}@{src['dfad']['commit']}" == layouts.DFAD
    assert f"{src['fast']['repo']}@{src['fast']['commit']}" == layouts.FAST
    assert {(m["arch"], m["source"]) for m in FIXTURE["models"]} == {(a, s) for a in ARCHS for s in ("dfad", "fast")}


@pytest.mark.parametrize("arch", ARCHS)
def test_names_shapes_and_counts_equal_the_references(models, arch):
    model = models[arch]
    ours = shapes(model)
    dfad, fast = entry(arch, "dfad"), entry(arch, "fast")
    assert ours == [(k, tuple(s)) for k, s in dfad["keys"]], "DFAD's names, shapes and order exactly"
    renamed = list(layouts.rename(arch, {k: None for k, _ in fast["keys"]}, "fast"))
    assert renamed == [k for k, _ in ours], "Fast-Datafree's names map one to one, in order"
    assert [tuple(s) for _, s in fast["keys"]] == [s for _, s in ours]
    count = sum(p.numel() for p in model.parameters())
    assert count == PARAMETERS[arch] == dfad["parameters"] == fast["parameters"]
    assert model_task(arch) == "segmentation" and arch not in list_models(task="classification")


def test_structure_follows_dfad(models):
    teacher, student = models["deeplabv3_resnet50"], models["deeplabv3_mobilenet"]
    for model, p in ((teacher, 0.0), (student, 0.5)):  # DFAD's builder default / its distillation scripts
        assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [p]
        aspp = [m.dilation[0] for m in model.classifier[0].convs.modules() if isinstance(m, nn.Conv2d)]
        assert aspp == [1, 12, 24, 32, 1]
    assert [
        m.dilation for m in teacher.backbone.layer4.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    ] == [(2, 2), (4, 4), (4, 4)]  # torchvision: a stage's first block keeps the previous dilation
    dw = [b.conv[-5].dilation[0] for b in list(student.backbone.features)[1:]]
    assert dw == [1] * 10 + [2] * 6 + [4]
    assert [d for *_, d, _ in mobilenet_schedule("fast")] == [1] * 7 + [2] * 7 + [4] * 3
    assert [s for _, _, s, _, _ in mobilenet_schedule()] == [1, 2, 1, 2, 1, 1] + [1] * 11
    assert not any(isinstance(m, nn.ReLU) for m in student.backbone.modules())  # ReLU6 throughout


def test_output_shapes_features_and_stages(models):
    for arch, model in models.items():
        for h, w in ((128, 128), (96, 128)):
            with torch.no_grad():
                logits, feats = model(torch.randn(1, 3, h, w), return_features=True)
            assert logits.shape == (1, 13, h, w) and feats.shape == (1, 256, h // 8, w // 8), arch
        assert len(model.stages()) == 4
    teacher = models["deeplabv3_resnet50"]
    assert teacher.stages() == [
        teacher.backbone.layer1,
        teacher.backbone.layer2,
        teacher.backbone.layer3,
        teacher.backbone.layer4,
    ]


def test_other_input_channels_and_options():
    gray = deeplabv3_mobilenet(num_classes=5, in_channels=1).eval()
    with torch.no_grad():
        assert gray(torch.randn(2, 1, 64, 48)).shape == (2, 5, 64, 48)
    assert gray.backbone.features[0][0].weight.shape == (32, 1, 3, 3)
    with pytest.raises(ValueError, match="aspp_rates must be three"):
        deeplabv3_mobilenet(aspp_rates=(6, 12))
    with pytest.raises(ValueError, match="unknown MobileNetV2 variant 'tf'"):
        deeplabv3_mobilenet(variant="tf")


def test_resnet50_other_input_channels():
    with torch.device("meta"):  # shapes only: no storage, no 1 s initialisation
        model = deeplabv3_resnet50(num_classes=2, in_channels=1).eval()
        assert model.backbone.conv1.weight.shape == (64, 1, 7, 7)
        assert model(torch.empty(1, 1, 32, 40)).shape == (1, 2, 32, 40)


def test_the_test_beds_pair_keeps_its_names():
    """model_zoo/mnist_seg_deeplab_tiny.pt was saved with these (the nested head)."""
    keys = list(create_model("deeplab_tiny", 11, 1, 64).state_dict())
    assert "classifier.1.0.weight" in keys and "classifier.2.weight" in keys and "classifier.4.weight" not in keys


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", ["dfad", "fast"])
def test_reference_state_dicts_load_strictly(models, arch, source):
    model, e = models[arch], entry(arch, source)
    state = distinct_state([(k, tuple(s)) for k, s in e["keys"]])
    for variant in (state, {"state_dict": state}, {"module." + k: v for k, v in state.items()}):
        assert load_state(model, variant, "the reference checkpoint", arch=arch) == e["layout"]
    assert load_state(model, state, "the reference checkpoint") == e["layout"]  # no arch: any exact layout
    own = model.state_dict()
    for i, k in enumerate(own):  # the reference's i-th tensor is our i-th
        assert own[k].min() == own[k].max() == i + 1, k


def test_a_dfad_student_file_loads_with_its_counts(tmp_path):
    e = entry("deeplabv3_mobilenet", "dfad")
    path = str(tmp_path / "nyuv2-deeplabv3_mobilenet.pt")
    torch.save(distinct_state([(k, tuple(s)) for k, s in e["keys"]]), path)  # DFAD saves a bare state_dict()
    model, _ = load_model(path, arch="deeplabv3_mobilenet")  # 13 classes and 3 channels read off the file
    assert model.classifier[4].out_channels == 13 and model.backbone.features[0][0].in_channels == 3
    assert layouts.read_counts(model.state_dict()) == (13, 3)


# --- the same function --------------------------------------------------------------------------------------
REL = 1e-9  # float64: the reference and ours sum in other orders; any structural difference is O(1)


def _close(got, r, what):
    step = r["step"]
    want = torch.tensor(r["sampled"], dtype=torch.float64)
    tol = REL * r["max_abs"]
    err = float((got[0, :, ::step, ::step] - want).abs().max())
    assert err <= tol, (what, err, tol)
    assert float(got.sum()) == pytest.approx(r["sum"], abs=tol * got.numel())
    assert float(got.abs().sum()) == pytest.approx(r["abs_sum"], rel=1e-9)
    return err


@pytest.mark.parametrize("r", FIXTURE["logits"], ids=lambda r: f"{r['arch']}-{r['source']}")
def test_logits_match_the_reference(models, r):
    """DFAD's models are ours with the defaults; Fast-Datafree's with aspp_rates=(12, 24, 36) (and the MobileNetV2's
    variant='fast'), after loading its state dict through the ``fast`` layout."""
    arch, e = r["arch"], entry(r["arch"], r["source"])
    x = torch.randn(
        *r["input"]["shape"], generator=torch.Generator().manual_seed(r["input"]["seed"]), dtype=torch.float64
    )
    assert ref.checksum([x]) == pytest.approx(r["input"]["checksum"], rel=1e-12)
    if r["source"] == "dfad":
        model = models[arch]
    else:
        extra = {"variant": "fast"} if arch == "deeplabv3_mobilenet" else {}
        model = BUILDERS[arch](13, aspp_rates=FAST_ASPP_RATES, **extra).eval()
    filled = ref.filled_state(e["keys"])  # float64, by the reference's names
    assert ref.checksum(filled.values()) == pytest.approx(r["fill_checksum"], rel=1e-12)
    model.double()
    try:
        assert load_state(model, filled, "the reference", arch=arch) == e["layout"]
        with torch.no_grad():
            got = model(x)
        _close(got, r, arch)
    finally:
        model.float()


def test_heads_match_and_the_rates_matter(models):
    """On a 40x40 map every atrous tap lands inside: DFAD's rates (12, 24, 32) and Fast-Datafree's (12, 24, 36)."""
    dfad, fast = (next(h for h in FIXTURE["heads"] if h["source"] == s) for s in ("dfad", "fast"))
    h = torch.randn(
        *dfad["input"]["shape"], generator=torch.Generator().manual_seed(dfad["input"]["seed"]), dtype=torch.float64
    )
    heads = {}
    for source, rates in (("dfad", (12, 24, 32)), ("fast", FAST_ASPP_RATES)):
        e = entry("deeplabv3_mobilenet", source)
        heads[source] = deeplabv3_mobilenet(13, aspp_rates=rates).double().eval()  # float64 before loading
        heads[source].load_state_dict(layouts.rename("deeplabv3_mobilenet", ref.filled_state(e["keys"]), e["layout"]))
    with torch.no_grad():
        ours_dfad = heads["dfad"].classifier(h)
        _close(ours_dfad, dfad, "dfad head")
        _close(heads["fast"].classifier(h), fast, "fast head")
        heads["fast"].load_state_dict(heads["dfad"].state_dict())  # the same weights, rates 36 against 32
        apart = float((heads["fast"].classifier(h) - ours_dfad).abs().max())
    assert apart > 1e-3 * float(ours_dfad.abs().max()), "rate 32 vs 36 is another function on a map wider than 36"


def test_fast_weights_in_dfads_structure_are_another_function():
    """What the fixture measured (float32, Fast-Datafree's weights, the builders' defaults vs its own code)."""
    m = {(r["arch"], tuple(r["input"][-2:])): r for r in FIXTURE["measured"]}
    assert all(r["fast_options_max_abs_diff"] == 0.0 for r in m.values())
    assert m[("deeplabv3_resnet50", (128, 128))]["defaults_max_abs_diff"] == 0.0  # a 16x16 map: no tap of 32/36 inside
    assert (
        m[("deeplabv3_resnet50", (256, 341))]["defaults_max_abs_diff"]
        > 0.1 * m[("deeplabv3_resnet50", (256, 341))]["max_abs_logit"]
    )
    assert m[("deeplabv3_mobilenet", (128, 128))]["defaults_argmax_changed"] > 0.1


# --- a checkpoint that does not fit -------------------------------------------------------------------------
def test_a_checkpoint_for_other_classes_says_so(models):
    e = entry("deeplabv3_resnet50", "fast")
    keys = [(k, (21,) + tuple(s[1:]) if k.startswith("classifier.classifier.4.") else tuple(s)) for k, s in e["keys"]]
    with pytest.raises(CheckpointError) as err:
        load_state(
            models["deeplabv3_resnet50"], distinct_state(keys), "checkpoint 'voc.pth'", arch="deeplabv3_resnet50"
        )
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("checkpoint 'voc.pth' does not fit the model deeplabv3_resnet50")
    assert "the checkpoint has 21 classes, the dataset has 13" in msg and "Fix:" in msg


def test_a_checkpoint_of_the_other_network_says_so(models):
    student = distinct_state([(k, tuple(s)) for k, s in entry("deeplabv3_mobilenet", "fast")["keys"]])
    with pytest.raises(CheckpointError) as err:
        load_state(
            models["deeplabv3_resnet50"], student, "checkpoint 't.pt'", arch="deeplabv3_resnet50", image_size=128
        )
    msg = str(err.value)
    assert "\n" not in msg and "are a deeplabv3_mobilenet in the fast layout" in msg
    assert "teacher_arch=deeplabv3_mobilenet" in msg


def test_a_fast_student_with_a_block_too_many_says_which(models):
    e = entry("deeplabv3_mobilenet", "fast")
    state = distinct_state([(k, tuple(s)) for k, s in e["keys"]])
    state["backbone.high_level_features.18.0.weight"] = torch.zeros(1280, 320, 1, 1)  # torchvision's last conv
    with pytest.raises(CheckpointError) as err:
        load_state(
            models["deeplabv3_mobilenet"], state, "checkpoint 's.pt'", arch="deeplabv3_mobilenet", image_size=128
        )
    msg = str(err.value)
    assert "\n" not in msg and "the fast layout of deeplabv3_mobilenet but the network differs" in msg
    assert "1 unexpected key" in msg and "features.18" in msg
