"""Parameter-name layouts of the DFKD reference repositories, and their mapping to ours.

The papers' CIFAR tables were made with teachers published by the CMI
repository (saved by its ``train_scratch.py`` as ``{'epoch', 'arch',
'state_dict', 'best_acc1', 'optimizer', 'scheduler'}``, often from a
``DataParallel``, hence ``module.`` prefixes), by DFAD (bare
``model.state_dict()`` files such as ``cifar10-resnet34_8x.pt``) and by DAFL.
Their networks are ours layer for layer (same shapes, same order, same
function); only the names differ. :func:`to_datafree` renames a state dict of
any known layout to this package's names (which our results and checkpoints
use) and says which layout it was:

``datafree``
    ours.
``cmi``
    the model classes of zju-vipa/CMI (``datafree/models/classifiers/``), used
    unchanged by zju-vipa/Fast-Datafree and ljrprocc/DataFree. For
    resnet18/34/50 these are also DAFL's ``resnet.py`` and DFAD's
    ``network/resnet_8x.py`` names (CMI's ``resnet.py`` is DAFL's file), so
    DFAD's and DAFL's ResNet checkpoints report ``cmi`` too. For
    ``mobilenetv2`` they are torchvision's ``mobilenet_v2`` names.
``dafl``
    DAFL's LeNet-5 classes (``conv1`` .. ``fc2``), also DFAD's
    ``network/lenet.py`` (borrowed from DAFL), so DFAD's ``mnist-lenet5.pt``
    reports ``dafl``. Note that DAFL's ``teacher-train.py`` saves the whole
    module (``torch.save(net, ...)``), which ``torch.load(weights_only=True)``
    refuses: re-save its ``state_dict()`` first (the loader's error says how).
``fast``
    the segmenters of zju-vipa/Fast-Datafree (``datafree/models/deeplab/``,
    VainF/DeepLabV3Plus-Pytorch's code) for ``deeplabv3_resnet50`` and
    ``deeplabv3_mobilenet``: the head one level deeper
    (``classifier.classifier.<i>``), and for the MobileNetV2 torchvision-style
    nested blocks split in ``backbone.low_level_features.<0..3>`` and
    ``backbone.high_level_features.<4..17>`` (a slice keeps the indices). DFAD's segmenters
    (``network/segmentation/``) have our names exactly (``datafree.models.deeplab``
    was built to them), so a DFAD checkpoint loads unrenamed and reports
    ``datafree``. Fast-Datafree's networks compute another function with the
    same parameters (ASPP rates, MobileNetV2 dilations): see
    :mod:`datafree.models.deeplab` for the builders' options that reproduce it.

Each mapping below names the file it was read from (repository, path, commit).
``tests/fixtures/reference_layouts.json`` records the names and shapes those
classes produce, and ``tests/test_reference_layouts.py`` checks that every one
loads strictly and computes the reference's logits; for the segmenters,
``tests/fixtures/deeplab_reference.json`` and ``tests/test_deeplab_models.py``.

Functional notes (checked against the reference code): CMI's tiny ResNets pool
with ``AvgPool2d(8)`` and DAFL/DFAD's ResNets with ``avg_pool2d(out, 4)``, both
the global average at 32x32 (the only size they run at); CMI's VGG pools after
the fourth block only for 64x64 inputs, which is what ours does at 32x32 and
64x64 (ours also pools it at 128x128; at 16x16 and below ours pools less than
theirs would). CMI's ``mobilenetv2`` has ImageNet strides: it is our
``mobilenetv2`` (``mobilenetv2_cifar`` is the CIFAR-stride network).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..registry import MODELS
from .factory import create_model, model_task
from .mobilenetv2 import _CFG

DATAFREE = "datafree"

# where each mapping comes from
CMI = "zju-vipa/CMI@9e79fa9e2328205f26dbdb226878f3a28f3bf4cc"
FAST = "zju-vipa/Fast-Datafree@0dcecbc178b87048bedf730acb577045b3c0b57a"
DATAFREE_LJR = "ljrprocc/DataFree@bf3096bb0b15ea396a3451aa0c6479626f092717"
DFAD = "VainF/Data-Free-Adversarial-Distillation@c161591aae4c13e53943dcb61c162876421aad7a"
DAFL = "huawei-noah/Efficient-Computing@225ddd2e6ca41915434557f7f49d395e4f801e3e"
_CLS = "datafree/models/classifiers"
_SAME_IN = f"(the same names in {FAST} and {DATAFREE_LJR}, same path)"

Repl = Union[str, Callable[["re.Match[str]"], str]]


@dataclass(frozen=True)
class Layout:
    """One reference naming scheme of one architecture family."""

    name: str
    source: str  # repository@commit: path (class)
    marker: str  # a regex some key of this layout matches and no key of ours does
    rules: Tuple[Tuple[str, Repl], ...]  # (regex, replacement), applied in order to every key

    def rename(self, key: str) -> str:
        for pattern, repl in self.rules:
            key = re.sub(pattern, repl, key, count=1)
        return key

    def score(self, keys: Sequence[str]) -> int:
        return sum(1 for k in keys if re.search(self.marker, k))


def _stage(m: "re.Match[str]") -> str:
    """``layer3.`` -> ``layers.2.``: their stages count from 1, our ModuleList from 0."""
    return f"layers.{int(m.group(1)) - 1}."


def _mobilenetv2_features(m: "re.Match[str]") -> str:
    """torchvision's / CMI's ``features.<i>.<rest>`` -> our ``stem`` / ``blocks.<stage>.<j>.block`` / ``conv_last``."""
    i, rest = int(m.group(1)), m.group(2)
    if i == 0:  # ConvBNReLU(3, 32, stride 2): 0 conv, 1 bn
        return f"stem.{rest}"
    i -= 1
    for stage, (t, _, n, _) in enumerate(_CFG):
        if i < n:
            # an InvertedResidual's conv: [ConvBNReLU pw (t != 1)], ConvBNReLU dw, Conv2d pw-linear, BatchNorm2d;
            # ours flattens them into one Sequential with the ReLU6 layers at 2 and 5
            seq = (
                {"0.0": 0, "0.1": 1, "1.0": 3, "1.1": 4, "2": 6, "3": 7}
                if t != 1
                else {"0.0": 0, "0.1": 1, "1": 3, "2": 4}
            )
            mm = re.match(r"conv\.(\d(?:\.\d)?)\.(weight|bias|running_mean|running_var|num_batches_tracked)$", rest)
            if not mm or mm.group(1) not in seq:
                return f"blocks.{stage}.{i}.?{rest}"  # not a MobileNetV2 block key: left unmatched
            return f"blocks.{stage}.{i}.block.{seq[mm.group(1)]}.{mm.group(2)}"
        i -= n
    if i == 0:  # ConvBNReLU(320, 1280, 1)
        return f"conv_last.{rest}"
    return m.group(0)


#: Fast-Datafree's nested InvertedResidual ``conv`` indices -> DFAD's (and our) flat ones: with an expansion conv
#: (ConvBNReLU pw, ConvBNReLU dw, pw-linear, BN) and without it (t = 1: ConvBNReLU dw, pw-linear, BN)
_NESTED_TO_FLAT = {
    True: {"0.0": 0, "0.1": 1, "1.0": 3, "1.1": 4, "2": 6, "3": 7},
    False: {"0.0": 0, "0.1": 1, "1": 3, "2": 4},
}


def _fast_deeplab_mobilenet(m: "re.Match[str]") -> str:
    """Fast-Datafree's ``backbone.{low,high}_level_features.<j>.<rest>`` -> DFAD's ``backbone.features.<j>.<rest>``:
    ``low_level_features`` is ``features[0:4]``, ``high_level_features`` ``features[4:-1]`` (the 1280 conv dropped),
    and slicing an ``nn.Sequential`` keeps its children's names, so ``j`` runs 0..3 and 4..17 (not from 0 again);
    ``features.0`` (ConvBNReLU: 0 conv, 1 bn) keeps its indices, the blocks' nested ``conv`` ones are flattened."""
    if (m.group(1) == "low") != (int(m.group(2)) < 4):
        return f"backbone.features.?{m.group(0)}"  # an index the split does not hold: left unmatched
    j = int(m.group(2))
    rest = m.group(3)
    if j == 0:
        return f"backbone.features.0.{rest}"
    i, expands = j - 1, None
    for t, _, n, _ in _CFG:
        if i < n:
            expands = t != 1
            break
        i -= n
    mm = re.match(r"conv\.(\d(?:\.\d)?)\.(weight|bias|running_mean|running_var|num_batches_tracked)$", rest)
    if expands is None or not mm or mm.group(1) not in _NESTED_TO_FLAT[expands]:
        return f"backbone.features.{j}.?{rest}"  # not a block of DFAD's MobileNetV2: left unmatched
    return f"backbone.features.{j}.conv.{_NESTED_TO_FLAT[expands][mm.group(1)]}.{mm.group(2)}"


#: architecture -> family (architectures of one family share their rename rules)
FAMILY: Dict[str, str] = {
    **{a: "resnet" for a in ("resnet18", "resnet34", "resnet50")},
    **{a: "resnet_cifar" for a in ("resnet8", "resnet20", "resnet32", "resnet56", "resnet110")},
    **{a: "wrn" for a in ("wrn16_1", "wrn16_2", "wrn40_1", "wrn40_2")},
    **{a: "vgg" for a in ("vgg8", "vgg11", "vgg13")},
    **{a: "lenet" for a in ("lenet5", "lenet5_half")},
    "mobilenetv2": "mobilenetv2",
}

#: the segmenters' families (kept apart from :data:`FAMILY`, the classifiers that
#: ``tests/fixtures/reference_layouts.json`` covers; ``tests/fixtures/deeplab_reference.json`` covers these)
SEGMENTER_FAMILY: Dict[str, str] = {
    "deeplabv3_resnet50": "deeplabv3_resnet50",
    "deeplabv3_mobilenet": "deeplabv3_mobilenet",
}

#: family -> the reference layouts (ours, ``datafree``, is the identity and always tried first)
LAYOUTS: Dict[str, Tuple[Layout, ...]] = {
    # CMI resnet.py: ResNet(conv1, bn1, layer1..layer4 of BasicBlock/Bottleneck with `shortcut`, linear);
    # identical names: DAFL Data-Efficient-Model-Compression/DAFL/resnet.py ResNet18/34/50 and
    # DFAD network/resnet_8x.py ResNet18_8x/34_8x/50_8x
    "resnet": (
        Layout(
            "cmi",
            f"{CMI}: {_CLS}/resnet.py resnet18/34/50 {_SAME_IN}; {DAFL}: "
            f"Data-Efficient-Model-Compression/DAFL/resnet.py; {DFAD}: network/resnet_8x.py",
            r"^(layer\d+|linear)\.",
            ((r"^layer(\d+)\.", _stage), (r"^linear\.", "head.")),
        ),
    ),
    # CMI resnet_tiny.py (RepDistiller's): conv1, bn1, layer1..3 with `downsample` shortcuts, fc
    "resnet_cifar": (
        Layout(
            "cmi",
            f"{CMI}: {_CLS}/resnet_tiny.py resnet8/20/32/56/110 {_SAME_IN}",
            r"^(layer\d+|fc)\.",
            ((r"^(layer\d+\.\d+)\.downsample\.", r"\1.shortcut."), (r"^layer(\d+)\.", _stage), (r"^fc\.", "head.")),
        ),
    ),
    # CMI wresnet.py (ZSKT's): conv1, block1..3.layer.<i> (bn1 conv1 bn2 conv2 convShortcut), bn1, fc
    "wrn": (
        Layout(
            "cmi",
            f"{CMI}: {_CLS}/wresnet.py wrn_16_1/16_2/40_1/40_2 {_SAME_IN}",
            r"^(block\d+\.layer|fc)\.",
            (
                (r"^block(\d+)\.layer\.", lambda m: f"groups.{int(m.group(1)) - 1}."),
                (r"\.convShortcut\.", ".shortcut."),
                (r"^bn1\.", "bn."),
                (r"^fc\.", "head."),
            ),
        ),
    ),
    # CMI vgg.py (RepDistiller's) vgg8_bn/vgg11_bn/vgg13_bn (registry.py's vgg8/11/13): block0..4 Sequentials of
    # conv, bn, relu with the last relu dropped (same indices as ours), classifier
    "vgg": (
        Layout(
            "cmi",
            f"{CMI}: {_CLS}/vgg.py vgg8_bn/vgg11_bn/vgg13_bn {_SAME_IN}",
            r"^(block\d+|classifier)\.",
            ((r"^block(\d+)\.", lambda m: f"blocks.{m.group(1)}."), (r"^classifier\.", "head.")),
        ),
    ),
    "lenet": (
        # CMI lenet.py LeNet5/LeNet5Half: features (our indices), fc.0 and fc.2
        Layout("cmi", f"{CMI}: {_CLS}/lenet.py LeNet5/LeNet5Half {_SAME_IN}", r"^fc\.\d", ((r"^fc\.", "head."),)),
        # DAFL lenet.py LeNet5/LeNet5Half: conv1, conv2, conv3, fc1, fc2 (relu/maxpool modules hold nothing);
        # the same in DFAD network/lenet.py
        Layout(
            "dafl",
            f"{DAFL}: Data-Efficient-Model-Compression/DAFL/lenet.py; {DFAD}: network/lenet.py",
            r"^(conv[123]|fc[12])\.",
            (
                (r"^conv1\.", "features.0."),
                (r"^conv2\.", "features.3."),
                (r"^conv3\.", "features.6."),
                (r"^fc1\.", "head.0."),
                (r"^fc2\.", "head.2."),
            ),
        ),
    ),
    # CMI mobilenetv2.py mobilenet_v2 (torchvision's MobileNetV2): features.0 stem, features.1..17 blocks,
    # features.18 last conv, classifier.1 (after Dropout at classifier.0)
    "mobilenetv2": (
        Layout(
            "cmi",
            f"{CMI}: {_CLS}/mobilenetv2.py mobilenet_v2 {_SAME_IN}",
            r"^(features|classifier)\.",
            ((r"^features\.(\d+)\.(.*)$", _mobilenetv2_features), (r"^classifier\.1\.", "head.")),
        ),
    ),
    # Fast-Datafree modeling.py deeplabv3_resnet50: DeepLabV3(backbone = IntermediateLayerGetter(resnet50,
    # {'layer4': 'out'}), classifier = _deeplab.py DeepLabHead, a Module holding the Sequential as `classifier`)
    "deeplabv3_resnet50": (
        Layout(
            "fast",
            f"{FAST}: datafree/models/deeplab/modeling.py deeplabv3_resnet50, _deeplab.py DeepLabHead",
            r"^classifier\.classifier\.",
            ((r"^classifier\.classifier\.", "classifier."),),
        ),
    ),
    # Fast-Datafree modeling.py deeplabv3_mobilenet: backbone/mobilenetv2.py's torchvision-style MobileNetV2 with
    # `features` split into low_level_features (0:4) and high_level_features (4:-1); the head as above
    "deeplabv3_mobilenet": (
        Layout(
            "fast",
            f"{FAST}: datafree/models/deeplab/modeling.py deeplabv3_mobilenet, backbone/mobilenetv2.py, "
            "_deeplab.py DeepLabHead",
            r"^(classifier\.classifier|backbone\.(low|high)_level_features)\.",
            (
                (r"^backbone\.(low|high)_level_features\.(\d+)\.(.*)$", _fast_deeplab_mobilenet),
                (r"^classifier\.classifier\.", "classifier."),
            ),
        ),
    ),
}


def family_of(arch: Optional[str]) -> Optional[str]:
    return FAMILY.get(arch or "") or SEGMENTER_FAMILY.get(arch or "")


def layouts_of(arch: Optional[str]) -> List[str]:
    """The layout names a checkpoint of ``arch`` may come in, ours first."""
    return [DATAFREE] + [lay.name for lay in LAYOUTS.get(family_of(arch) or "", ())]


def unwrap(state: Mapping) -> Dict[str, torch.Tensor]:
    """The state dict inside a checkpoint dict (``{'state_dict': ...}``, repeatedly), without ``module.`` prefixes
    (``DataParallel``/``DistributedDataParallel``)."""
    while isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    out = {}
    for k, v in state.items():
        k = str(k)
        while k.startswith("module."):
            k = k[len("module.") :]
        out[k] = v
    return out


def rename(arch: Optional[str], state: Mapping[str, torch.Tensor], layout: str) -> Dict[str, torch.Tensor]:
    """``state`` (in ``layout``, a name of :func:`layouts_of`) with our names."""
    if layout == DATAFREE:
        return dict(state)
    for lay in LAYOUTS.get(family_of(arch) or "", ()):
        if lay.name == layout:
            return {lay.rename(k): v for k, v in state.items()}
    raise KeyError(f"no layout {layout!r} for {arch!r}; known: {', '.join(layouts_of(arch))}")


def detect(arch: Optional[str], state: Mapping[str, torch.Tensor], expected: Optional[Sequence[str]] = None) -> str:
    """The layout of ``state`` for ``arch``: the one whose renamed keys are exactly ``expected`` (our model's keys,
    when given), else the reference layout most keys look like, else ``datafree``."""
    keys = list(state)
    layouts = LAYOUTS.get(family_of(arch) or "", ())
    if expected is not None:
        want = set(expected)
        if set(keys) == want:
            return DATAFREE
        for lay in layouts:
            if {lay.rename(k) for k in keys} == want:
                return lay.name
    best = max(layouts, key=lambda lay: lay.score(keys), default=None)
    return best.name if best is not None and best.score(keys) > 0 else DATAFREE


def to_datafree(
    arch: Optional[str], state: Mapping, expected: Optional[Sequence[str]] = None
) -> Tuple[Dict[str, torch.Tensor], str]:
    """``(state with our names, the layout it came in)`` for a state dict of ``arch`` in any known layout, with or
    without the ``{'state_dict': ...}`` wrapper and ``module.`` prefixes. ``expected``: our model's keys, which make
    the detection exact. Unknown names are left as they are (the strict load then reports them)."""
    state = unwrap(state)
    if arch is None and expected is not None:  # no architecture named: any family whose rename fits exactly
        want = set(expected)
        if set(state) != want:
            for layouts in LAYOUTS.values():
                for lay in layouts:
                    if {lay.rename(k) for k in state} == want:
                        return {lay.rename(k): v for k, v in state.items()}, lay.name
        return state, DATAFREE
    layout = detect(arch, state, expected)
    return rename(arch, state, layout), layout


# --- explaining a checkpoint that does not fit -----------------------------------------------------------------
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def parameter_count(state: Mapping[str, torch.Tensor]) -> int:
    return sum(int(v.numel()) for k, v in state.items() if isinstance(v, torch.Tensor) and not k.endswith(_BUFFERS))


def _shapes(state: Mapping[str, torch.Tensor]) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def _head_and_stem(shapes: Mapping[str, Tuple[int, ...]]) -> Tuple[Optional[str], Optional[str]]:
    """Our classifier's weight key (the last 2-D ``head.*weight``; a segmenter's: the last 1x1 conv with a bias
    in ``classifier.``) and the first convolution's weight key."""
    heads = [k for k, s in shapes.items() if k.startswith("head.") and k.endswith("weight") and len(s) == 2]
    if not heads:  # a segmenter (datafree.models.deeplab): classifier.<i> = Conv2d(channels, classes, 1)
        heads = [
            k
            for k, s in shapes.items()
            if k.startswith("classifier.")
            and k.endswith(".weight")
            and len(s) == 4
            and s[2:] == (1, 1)
            and k[: -len("weight")] + "bias" in shapes
        ]
    convs = [k for k, s in shapes.items() if k.endswith("weight") and len(s) == 4]
    return (heads[-1] if heads else None), (convs[0] if convs else None)


def _counts(shapes: Mapping[str, Tuple[int, ...]]) -> Tuple[Optional[int], Optional[int]]:
    head, stem = _head_and_stem(shapes)
    return (shapes[head][0] if head else None), (shapes[stem][1] if stem else None)


def read_counts(state: Mapping[str, torch.Tensor]) -> Tuple[Optional[int], Optional[int]]:
    """(classes, input channels) of a state dict with our names: the classifier's rows, the first convolution's
    inputs (None where it has neither)."""
    return _counts(_shapes(state))


@functools.lru_cache(maxsize=None)
def _arch_shapes(arch: str, image_size: int) -> Optional[Tuple[Tuple[str, Tuple[int, ...]], ...]]:
    """The state-dict shapes of a registered ``arch`` (10 classes, 3 channels) at ``image_size``, or None."""
    try:
        return tuple(_shapes(create_model(arch, 10, 3, image_size).state_dict()).items())
    except Exception:  # an architecture that cannot take this size
        return None


def _with_counts(shapes: Mapping[str, Tuple[int, ...]], classes: int, channels: int) -> Dict[str, Tuple[int, ...]]:
    """``shapes`` of one of our models with its classifier rows and first convolution's inputs set."""
    out = dict(shapes)
    head, stem = _head_and_stem(out)
    if head:
        out[head] = (classes,) + out[head][1:]
        bias = head[: -len("weight")] + "bias"
        if bias in out:
            out[bias] = (classes,)
    if stem:
        out[stem] = (out[stem][0], channels) + out[stem][2:]
    return out


def _candidates(raw: Mapping[str, torch.Tensor], sizes: Sequence[int]) -> List[Tuple[str, str, int, bool, int]]:
    """Registered architectures whose keys ``raw`` has under one of their layouts: ``(arch, layout, image size,
    shapes agree too, classes)``, with the checkpoint's own class and channel counts."""
    found = []
    for arch in MODELS.list():
        for layout in layouts_of(arch):
            renamed = _shapes(rename(arch, raw, layout))
            classes, channels = _counts(renamed)
            if classes is None or channels is None:
                continue
            segmenter_head = str(_head_and_stem(renamed)[0]).startswith("classifier.")
            if segmenter_head != (model_task(arch) == "segmentation"):  # a classifier's state is no segmenter's
                continue
            for size in sizes:
                own = _arch_shapes(arch, size)
                if own is None or set(dict(own)) != set(renamed):
                    continue
                found.append((arch, layout, size, _with_counts(dict(own), classes, channels) == renamed, classes))
    return found


def _misses(arch: Optional[str], key: str, layout: str, own: Mapping[str, object]) -> bool:
    """Whether ``key`` (of ``layout``) has no counterpart among our names ``own``."""
    return next(iter(rename(arch, {key: None}, layout))) not in own


def _n(count: int, word: str, plural: str = "s") -> str:
    return f"{count} {word}{'' if count == 1 else plural}"


def explain(
    where: str,
    model: torch.nn.Module,
    arch: Optional[str],
    raw: Mapping[str, torch.Tensor],
    layout: str,
    image_size: int = 32,
) -> str:
    """One line: why ``raw`` (a state dict without wrapper and prefixes, detected as ``layout``) does not fit
    ``model`` (an ``arch``), the likely cause and the fix."""
    own = _shapes(model.state_dict())
    got = _shapes(rename(arch, raw, layout))
    name = arch or type(model).__name__
    missing = [k for k in own if k not in got]
    unexpected = [k for k in got if k not in own]
    wrong = [k for k in own if k in got and got[k] != own[k]]
    details = []
    if wrong:
        details.append(
            f"{_n(len(wrong), 'shape mismatch', 'es')} (checkpoint vs model), e.g. {wrong[0]} "
            f"{got[wrong[0]]} vs {own[wrong[0]]}"
        )
    if missing:
        details.append(f"{_n(len(missing), 'key')} missing, e.g. {missing[0]!r}")
    if unexpected:
        details.append(f"{_n(len(unexpected), 'unexpected key')}, e.g. {unexpected[0]!r}")
    tail = f" ({'; '.join(details)})" if details else ""
    head = f"{where} does not fit the model {name} ({type(model).__name__})"

    own_classes, own_channels = _counts(own)
    classes, channels = _counts(got)
    if classes is None or channels is None:  # names not ours: read the counts off its tensors, in order
        mats = [s for k, s in got.items() if k.endswith("weight") and len(s) == 2]
        convs = [s for k, s in got.items() if k.endswith("weight") and len(s) == 4]
        classes = classes if classes is not None else (mats[-1][0] if mats else None)
        channels = channels if channels is not None else (convs[0][1] if convs else None)
    counts = []
    if classes is not None and own_classes is not None and classes != own_classes:
        counts.append(
            (f"the checkpoint has {classes} classes, the dataset has {own_classes}", f"a dataset of {classes} classes")
        )
    if channels is not None and own_channels is not None and channels != own_channels:
        counts.append(
            (
                f"the checkpoint's first convolution takes {channels}-channel images, the dataset has {own_channels}",
                f"{channels}-channel images",
            )
        )
    head_key, stem_key = _head_and_stem(own)
    count_keys = {k for k in (head_key, stem_key) if k}
    if head_key:
        count_keys.add(head_key[: -len("weight")] + "bias")

    # 1. our network for another dataset: only the classifier's rows and the first convolution's inputs differ
    if not missing and not unexpected and wrong and set(wrong) <= count_keys and counts:
        return (
            f"{head}: {' and '.join(c for c, _ in counts)}. Fix: use it with the dataset it was trained for "
            f"({' and '.join(f for _, f in counts)}), or a teacher trained on this dataset{tail}"
        )

    # 2. another architecture (or image size): its names, in a known layout, and shapes are another model's
    sizes = [image_size] + ([32] if image_size != 32 else [])
    found = [c for c in _candidates(raw, sizes) if c[0] != arch or c[2] != image_size]
    for other, lay, size, same, other_classes in found:
        if not same:
            continue
        also = (
            f"; and it has {other_classes} classes, the dataset has {own_classes}"
            if own_classes is not None and other_classes != own_classes
            else ""
        )
        if other == arch:
            return (
                f"{head}: its shapes are those of {name} for {size}x{size} images, the model is built for "
                f"{image_size}x{image_size}{also}. Fix: use it with a dataset of {size}x{size} images{tail}"
            )
        return (
            f"{head}: its {parameter_count(raw):,} parameters are a {other} in the {lay} layout, not a "
            f"{name} ({parameter_count(model.state_dict()):,}){also}. Fix: load it as {other} "
            f"(teacher_arch={other}){tail}"
        )
    for other, lay, _size, _same, _other_classes in found:
        if other != arch and set(got) != set(own):
            return (
                f"{head}: its parameter names are those of {other} ({lay} layout), with other shapes. Fix: "
                f"load it as {other} (teacher_arch={other}) with the dataset it was trained for{tail}"
            )

    # 3. the names: a known layout of this architecture with another network inside, or no known layout
    overlap = len(set(got) & set(own))
    if 2 * overlap < len(own):  # not even half of the names: another naming scheme
        sample = next((k for k in raw if _misses(arch, k, layout, own)), next(iter(raw), "(none)"))
        return (
            f"{head}: its parameter names follow no layout known for {name} ({', '.join(layouts_of(arch))}) "
            f"nor another registered architecture's ({overlap} of {len(own)} names match), e.g. {sample!r}. "
            f"Fix: name the architecture it was trained as (teacher_arch=<name>, `datafree list models`), or "
            f"re-save it with this package's names{tail}"
        )
    if counts:
        return (
            f"{head}: {' and '.join(c for c, _ in counts)}, and the network differs. Fix: check the "
            f"architecture (teacher_arch=<name>) and the dataset it was trained for{tail}"
        )
    return (
        f"{head}: the names are the {layout} layout of {name} but the network differs ({overlap} of "
        f"{len(own)} keys in common). Fix: name the architecture it was trained as (teacher_arch=<name>, "
        f"`datafree list models`){tail}"
    )


def fill_untracked_counts(own: Mapping[str, torch.Tensor], state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Checkpoints from before PyTorch 0.4.1 lack BN's ``num_batches_tracked``: zeros (eval does not read it)."""
    for k, v in own.items():
        bn = k[: -len("num_batches_tracked")]
        if k.endswith(".num_batches_tracked") and k not in state and bn + "running_mean" in state:
            state[k] = torch.zeros_like(v, device="cpu")
    return state


__all__ = [
    "DATAFREE",
    "FAMILY",
    "LAYOUTS",
    "Layout",
    "SEGMENTER_FAMILY",
    "detect",
    "explain",
    "family_of",
    "fill_untracked_counts",
    "layouts_of",
    "parameter_count",
    "read_counts",
    "rename",
    "to_datafree",
    "unwrap",
]
