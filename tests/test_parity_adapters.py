"""The parity adapters' budgets and shim models (no reference work tree needed)."""

import importlib.util
import os

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY = os.path.join(ROOT, "benchmarks", "parity")


def _common():
    spec = importlib.util.spec_from_file_location(
        "parity_adapters_common", os.path.join(PARITY, "adapters", "_common.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("method", ["fast10", "cudfkd"])
def test_budget_loads_and_names_sources(method):
    C = _common()
    b = C.load_budget(os.path.join(PARITY, "budgets", f"{method}.yaml"))
    assert b["method"] == method
    assert b["reference"]["repo"] and b["reference"]["commit"]
    for key in b["shared"]:
        if key in ("teacher", "student", "dataset"):
            continue
        assert key in b["sources"], f"{method}: shared.{key} has no source"
        assert ":" in b["sources"][key], f"{method}: source of {key} names no file:line"
    assert set(b["smoke"]) <= set(b["shared"])
    smoke = C.effective_budget(b, smoke=True)
    assert smoke["epochs"] <= 2


def _flat(ours):
    return {k.split(".")[-1] if k.startswith(("synth.", "distill.", "optim.")) else k: v for k, v in ours.items()}


@pytest.mark.parametrize(
    "method,pairs",
    [
        (
            "fast10",
            {
                "epochs": "epochs",
                "warmup": "warmup",
                "ep_steps": "ep_steps",
                "kd_steps": "kd_steps",
                "batch_size": "batch_size",
                "synthesis_batch_size": "synthesis_batch_size",
                "ngf": "ngf",
                "reset_after": "reset_after",
                "lr": "lr",
                "lr_min": "lr_min",
            },
        ),
        (
            "cudfkd",
            {
                "epochs": "epochs",
                "ep_steps": "ep_steps",
                "kd_steps": "kd_steps",
                "batch_size": "batch_size",
                "synthesis_batch_size": "synthesis_batch_size",
                "g_steps": "g_steps",
                "nz": "nz",
                "ngf": "ngf",
                "T": "T",
                "adv": "adv",
                "grad_adv": "grad_adv",
                "begin_fraction": "begin_fraction",
                "end_fraction": "end_fraction",
                "lambda0": "lambda_0",
                "alpha": "alpha",
                "lr": "lr",
                "loss": "loss",
            },
        ),
    ],
)
def test_ours_overrides_equal_shared(method, pairs):
    b = yaml.safe_load(open(os.path.join(PARITY, "budgets", f"{method}.yaml")))
    ours = _flat(b["ours"])
    for ours_key, shared_key in pairs.items():
        assert ours[ours_key] == b["shared"][shared_key], (method, ours_key)


@pytest.mark.parametrize("arch", ["lenet5_bn", "lenet5_half", "lenet5"])
def test_shim_lenet_matches_ours(arch):
    import torch

    from datafree.registry import MODELS
    import datafree.models  # noqa: F401  (registers the models)

    C = _common()
    ours = MODELS.get(arch)(num_classes=10, in_channels=1, image_size=32)
    shim = C.SHIM_MODELS[arch](num_classes=10)
    so, ss = ours.state_dict(), shim.state_dict()
    assert list(so) == list(ss)
    assert all(so[k].shape == ss[k].shape for k in so)
    shim.load_state_dict(so, strict=True)
    ours.eval(), shim.eval()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), shim(x, l=0), atol=1e-5)
        lo, fo = ours(x, return_features=True)
        ls, fs = shim(x, return_features=True)
        assert torch.allclose(fo, fs, atol=1e-5)


def test_teacher_file_loads_into_shim():
    import torch

    path = os.path.join(ROOT, "model_zoo", "mnist_lenet5_bn.pt")
    if not os.path.isfile(path):
        pytest.skip("no teacher file")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    C = _common()
    C.SHIM_MODELS[ck["arch"]](num_classes=10).load_state_dict(ck["state_dict"], strict=True)
