"""datafree/catalog.py: the registries' declarations that listings and --print-config read without torch."""

import os
import subprocess
import sys

import pytest

from datafree import catalog
from datafree.config import config_yaml
from datafree.errors import ConfigError, UnknownNameError
from datafree.methods import check_names, method_tasks, resolve
from datafree.registry import METHODS, load_builtins

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_committed_catalog_is_the_registries_of_these_sources(monkeypatch):
    # in a fresh process: this one's registries hold what other tests registered
    out = subprocess.run(
        [sys.executable, "-m", "datafree.catalog", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # and it answers here, unless a plugin was loaded (other tests of this process load some)
    monkeypatch.setattr(catalog, "plugin_registrations", lambda: {})
    monkeypatch.setattr(catalog, "_loaded", None)
    assert catalog.current() is not None


def _live(monkeypatch):
    monkeypatch.setattr(catalog, "current", lambda: None)


@pytest.mark.parametrize("dataset,student", [("mnist", "lenet5_half"), ("cifar10", "resnet18"), ("mnist_seg", None)])
def test_configs_resolved_from_the_catalog_are_the_live_classes_configs(monkeypatch, dataset, student):
    load_builtins()
    monkeypatch.setattr(catalog, "plugin_registrations", lambda: {})  # other tests of this process load plugins
    monkeypatch.setattr(catalog, "_loaded", None)
    assert catalog.current() is not None
    task = catalog.dataset_facts(dataset)["task"]
    student = student or "deeplab_tiny_half"
    methods = [m for m in METHODS.list() if task in method_tasks(m)]
    assert len(methods) >= (6 if task == "segmentation" else 30)
    user = {"dataset": dataset, "student": student}
    from_catalog = {m: config_yaml(resolve({**user, "method": m})) for m in methods}
    _live(monkeypatch)
    for m in methods:
        assert config_yaml(resolve({**user, "method": m})) == from_catalog[m], m


def test_catalog_configs_check_types_and_choices_as_the_classes_do():
    base = {"method": "deepinv", "dataset": "mnist", "student": "lenet5_half"}
    with pytest.raises(ConfigError, match="adv_kind"):
        resolve(base, {"synth": {"adv_kind": "kl"}})
    with pytest.raises(ConfigError, match="iterations must be an integer"):
        resolve(base, {"synth": {"iterations": "many"}})
    with pytest.raises(UnknownNameError, match="iteration"):
        resolve(base, {"synth": {"iteratons": 3}})
    assert resolve({**base, "method": "mbdfkd"}, {"synth": {"adv_kind": "js"}}).synth["adv_kind"] == "js"


def test_check_names_refuses_unknown_names_and_other_tasks_with_the_catalog():
    cfg = resolve({"method": "dafl", "dataset": "mnist", "student": "lenet5_half"})
    assert check_names(cfg) is cfg
    cfg.student = "lenet5_hlf"
    with pytest.raises(UnknownNameError, match="lenet5_half"):
        check_names(cfg)
    cfg.student = "deeplab_tiny_half"
    with pytest.raises(ConfigError, match="segmentation model"):
        check_names(cfg)
    cfg.student, cfg.teacher_arch = "lenet5_half", "lenet_5"
    with pytest.raises(UnknownNameError, match="lenet5"):
        check_names(cfg)


def test_a_catalog_of_other_sources_is_not_read(monkeypatch):
    monkeypatch.setattr(catalog, "_loaded", None)
    monkeypatch.setattr(catalog, "source_digest", lambda: "0" * 64)
    assert catalog.current() is None
    assert catalog.names("datasets", "mnist*") == ["mnist", "mnist_seg"]  # from the live registry
    assert catalog.dataset_facts("mnist_seg")["task"] == "segmentation"


@pytest.mark.parametrize(
    "argv",
    [
        ["list", "methods"],
        ["list", "datasets"],
        ["list", "models", "deeplab*"],
        ["list", "synthesizers"],
        ["--help"],
        ["distill", "--method", "fast2", "--dataset", "mnist_seg", "--student", "deeplab_tiny_half", "--print-config"],
    ],
)
def test_listings_help_and_print_config_import_no_torch(argv):
    code = (
        "import sys\nfrom datafree.cli import main\n"
        f"try:\n    rc = main({argv!r})\nexcept SystemExit as e:\n    rc = e.code\n"
        "sys.stdout.flush()\n"
        "print('TORCH' if 'torch' in sys.modules or 'timm' in sys.modules else 'NO-TORCH', rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().splitlines()[-1] == "NO-TORCH 0", out.stdout[-500:]
