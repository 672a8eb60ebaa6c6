"""Any timm model as ``timm/<name>``, adapted to the classifier interface.

The wrapper's state dict is timm's own (no prefix, the classifier once), so a
``torch.save(timm_model.state_dict())`` file loads into ``timm/<name>`` strictly
and the wrapper's checkpoints load into timm. ``forward_features`` and
``forward_head(pre_logits=True)`` give the feature map and vector; ``head`` is
timm's classifier module (``get_classifier()``).

Weights: ``pretrained_file`` builds the model with timm's pretrained weights
read from that local file (timm applies its own checkpoint filters). Nothing
is ever downloaded: :func:`pretrained_file` finds the weights in the local
Hugging Face cache, where ``timm.create_model(name, pretrained=True)`` on a
connected machine puts them.
"""

from __future__ import annotations

import os
from typing import Optional

from torch import nn

from ..errors import CheckpointError, UnknownNameError
from .base import Classifier

_PREFIX = "model."


class TimmClassifier(Classifier):
    def __init__(
        self,
        name: str,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        pretrained_file: Optional[str] = None,
    ):
        super().__init__()
        import timm

        if not timm.is_model(name):
            raise UnknownNameError("timm model", name, timm.list_models() + timm.list_pretrained())
        kw = {}
        try:
            import inspect

            entry = timm.models.get_model_entrypoint(name.split(".")[0])
            if "img_size" in inspect.signature(entry).parameters:
                kw["img_size"] = image_size
        except Exception:
            pass
        if pretrained_file:
            kw.update(pretrained=True, pretrained_cfg_overlay={"file": pretrained_file})
        self.model = timm.create_model(name, num_classes=num_classes, in_chans=in_channels, **kw)
        self.num_classes, self.in_channels = num_classes, in_channels
        self.feature_dim = self.model.num_features
        # the keys are timm's: "model." is dropped on save and added back on load
        self.register_state_dict_post_hook(_drop_prefix)
        self.register_load_state_dict_pre_hook(_add_prefix)

    @property
    def head(self) -> nn.Module:  # timm's classifier, registered once (under its own name in timm's model)
        return self.model.get_classifier()

    def forward_features(self, x):
        return self.model.forward_features(x)

    def pool(self, f):
        return self.model.forward_head(f, pre_logits=True)


def _drop_prefix(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + _PREFIX)]:
        state_dict[prefix + key[len(prefix + _PREFIX) :]] = state_dict.pop(key)


def _add_prefix(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + _PREFIX)]:
        state_dict[prefix + _PREFIX + key[len(prefix) :]] = state_dict.pop(key)


def legacy_state(state):
    """A timm wrapper's state dict as datafree-model/1 saved it (``model.`` before timm's names, the classifier a
    second time as ``head.fc.``) in timm's own names; any other state as it is."""
    if not any(k.startswith(_PREFIX) for k in state):
        return state
    return {k[len(_PREFIX) :]: v for k, v in state.items() if k.startswith(_PREFIX)}


def counts_of(name: str, state) -> tuple:
    """(classes, input channels) of a state dict of timm's ``name``, read at the model's classifier and first
    convolution (timm's ``pretrained_cfg`` names them); None where it cannot tell."""
    import timm

    try:
        cfg = timm.create_model(name, pretrained=False).pretrained_cfg
    except Exception:  # noqa: BLE001 (an unknown name fails where the model is built, with suggestions)
        return None, None
    classifier = cfg.get("classifier")
    classifier = classifier[0] if isinstance(classifier, (list, tuple)) else classifier
    first = cfg.get("first_conv")
    first = first[0] if isinstance(first, (list, tuple)) else first
    w, c = state.get(f"{classifier}.weight"), state.get(f"{first}.weight")
    return (
        int(w.shape[0]) if w is not None and w.dim() >= 2 else None,
        int(c.shape[1]) if c is not None and c.dim() == 4 else None,
    )


def timm_model(
    name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, pretrained_file: Optional[str] = None
) -> TimmClassifier:
    return TimmClassifier(name, num_classes, in_channels, image_size, pretrained_file=pretrained_file)


# -- pretrained weights, from the local cache only ---------------------------------------------------


def _pretrained_cfg(name: str):
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        raise UnknownNameError("timm model", name, timm.list_models() + timm.list_pretrained())
    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise CheckpointError(
            f'timm has no pretrained weights for {name}; `python -c "import timm; '
            f"print(timm.list_pretrained('{name.split('.')[0]}*'))\"` lists the tags that have"
        )
    return cfg


def pretrained_classes(name: str) -> Optional[int]:
    """The class count of timm's pretrained ``name`` (1000 for ImageNet-1k weights)."""
    return getattr(_pretrained_cfg(name), "num_classes", None)


def pretrained_file(name: str) -> Optional[str]:
    """The local file of timm's pretrained weights for ``name`` (``resnet18`` or ``resnet18.a1_in1k``) in the
    Hugging Face cache, or None when they are not there. Never downloads."""
    cfg = _pretrained_cfg(name)
    if not cfg.hf_hub_id:
        return cfg.file if cfg.file and os.path.isfile(cfg.file) else None
    from huggingface_hub import try_to_load_from_cache

    # read at call time (huggingface_hub reads its environment once, at import)
    cache = os.environ.get("HF_HUB_CACHE") or (
        os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None
    )
    repo = cfg.hf_hub_id.split("@")[0]
    for filename in ([cfg.hf_hub_filename] if cfg.hf_hub_filename else []) + ["model.safetensors", "pytorch_model.bin"]:
        found = try_to_load_from_cache(repo, filename, cache_dir=cache)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def fetch_hint(name: str) -> str:
    return (
        f"on a machine with network access run `python -c \"import timm; timm.create_model('{name}', "
        f'pretrained=True)"` and copy its Hugging Face cache (~/.cache/huggingface/hub, or $HF_HOME/hub) here'
    )


def name_of_cached(path: str) -> Optional[str]:
    """``test_resnet.r160_in1k`` for a cached ``.../models--timm--test_resnet.r160_in1k/snapshots/<rev>/<file>``."""
    parts = os.path.normpath(path).split(os.sep)
    for i, p in enumerate(parts):
        if p.startswith("models--timm--") and i + 2 < len(parts) and parts[i + 1] == "snapshots":
            return p[len("models--timm--") :]
    return None
