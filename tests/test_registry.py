import os
import subprocess
import sys
import textwrap

import pytest

from datafree.errors import DatafreeError, UnknownNameError
from datafree.registry import METHODS, MODELS, SYNTHESIZERS, Registry, load_plugins


def test_register_build_list_and_wildcards():
    reg = Registry("thing")

    @reg.register("alpha_one")
    def alpha_one(x=1):
        return x * 2

    reg.register("alpha_two", lambda: "two")
    reg.register(obj=lambda: 0, name="beta")
    assert reg.build("alpha_one", x=4) == 8
    assert reg.list("alpha*") == ["alpha_one", "alpha_two"]
    assert "beta" in reg and len(reg) == 3


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownNameError) as e:
        MODELS.get("resnet19")
    msg = str(e.value)
    assert "unknown model 'resnet19'" in msg and "resnet18" in msg


def test_duplicate_registration_is_an_error():
    reg = Registry("thing")
    reg.register("a", lambda: 1)
    with pytest.raises(DatafreeError, match="already registered"):
        reg.register("a", lambda: 2)
    reg.register("a", lambda: 3, override=True)
    assert reg.build("a") == 3


def test_builtins_are_registered():
    load_plugins([])
    for m in ("dafl", "deepinv", "scratch", "kd_real"):
        assert m in METHODS
    assert {"lenet5", "lenet5_half", "resnet8", "resnet110", "resnet50", "wrn40_2", "vgg13", "mobilenetv2"} <= set(MODELS)


PLUGIN = textwrap.dedent('''
    from dataclasses import dataclass
    import torch
    from datafree.registry import SYNTHESIZERS
    from datafree.methods import register_method
    from datafree.synthesis.base import Synthesizer

    @SYNTHESIZERS.register("{name}")
    class Noise(Synthesizer):
        """Gaussian noise images: the smallest possible method."""
        @dataclass
        class Config:
            scale: float = 1.0
        def synthesize(self):
            self.images_synthesized += 4
            return {{"noise": torch.tensor(0.0)}}
        def sample(self, n):
            return torch.randn(n, *self.spec.shape, device=self.device) * self.cfg.scale

    register_method("{name}", {{"synthesizer": "{name}", "distiller": "kd", "distill": {{"T": 4}},
                               "optim": {{"name": "adam", "lr": 0.001, "schedule": "constant"}}}})
''')


def test_plugin_module_registers_a_method_that_runs(tmp_path, monkeypatch, zoo):
    (tmp_path / "noise_plugin_a.py").write_text(PLUGIN.format(name="noise_a"))
    monkeypatch.syspath_prepend(str(tmp_path))
    load_plugins(["noise_plugin_a"])
    assert "noise_a" in METHODS and "noise_a" in SYNTHESIZERS
    from conftest import tiny
    from datafree.engine import run

    summary = run(tiny("noise_a", tmp_path / "run"))
    assert summary["method"] == "noise_a" and summary["evaluations"] == 2
    assert summary["images_synthesized"] == 2 * 4  # 2 epochs x one round (kd_steps = ep_steps) x 4


def test_plugin_from_entry_point_and_cli(tmp_path, monkeypatch):
    (tmp_path / "noise_plugin_b.py").write_text(PLUGIN.format(name="noise_b"))
    dist = tmp_path / "noise_plugin_b-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: noise-plugin-b\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[datafree.plugins]\nnoise_b = noise_plugin_b\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    load_plugins([])
    assert "noise_b" in METHODS
    # the command line loads the same entry point in a fresh process, and --plugin loads a file by path
    (tmp_path / "other" ).mkdir()
    (tmp_path / "other" / "noise_c.py").write_text(PLUGIN.format(name="noise_c"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "datafree.cli", "list", "methods", "--plugin",
                          str(tmp_path / "other" / "noise_c.py")], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "noise_b" in out.stdout and "noise_c" in out.stdout and "dafl" in out.stdout


def test_missing_plugin_is_a_clear_error():
    with pytest.raises(DatafreeError, match="cannot be imported"):
        load_plugins(["no_such_datafree_plugin_xyz"])
