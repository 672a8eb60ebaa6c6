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
    assert {
        "lenet5",
        "lenet5_half",
        "resnet8",
        "resnet110",
        "resnet50",
        "wrn40_2",
        "vgg13",
        "mobilenetv2",
        "mobilenetv2_cifar",
    } <= set(MODELS)


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
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "noise_c.py").write_text(PLUGIN.format(name="noise_c"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-m", "datafree.cli", "list", "methods", "--plugin", str(tmp_path / "other" / "noise_c.py")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "noise_b" in out.stdout and "noise_c" in out.stdout and "dafl" in out.stdout


def test_missing_plugin_is_a_clear_error():
    with pytest.raises(DatafreeError, match="cannot be imported"):
        load_plugins(["no_such_datafree_plugin_xyz"])


# --------------------------------------------------------------------------- plugin friction


def test_register_method_accepts_a_pathlib_path(tmp_path):
    from pathlib import Path

    from datafree.methods import register_method

    path = Path(tmp_path) / "path_method.yaml"
    path.write_text("synthesizer: dafl\ndistiller: kd\ndistill: {T: 4}\n")
    try:
        entry = register_method("path_method_x", path)
        assert entry["synthesizer"] == "dafl" and METHODS.get("path_method_x")["distill"] == {"T": 4}
    finally:
        METHODS.unregister("path_method_x")
    with pytest.raises(DatafreeError, match="mapping or a YAML file path"):
        register_method("path_method_y", ["not", "a", "mapping"])


def _ctx():
    import torch

    from datafree.data import get_spec
    from datafree.synthesis.base import Context

    torch.manual_seed(0)
    return Context(teacher=None, student=torch.nn.Linear(1, 1), spec=get_spec("digits"), device="cpu")


def test_config_without_dataclass_decorator_is_named():
    from dataclasses import dataclass
    from typing import ClassVar

    from datafree.distill.base import Distiller
    from datafree.errors import ConfigError
    from datafree.registry import config_class
    from datafree.synthesis.common import GeneratorSynthesizer

    class MyMethod(GeneratorSynthesizer):
        class Config(GeneratorSynthesizer.Config):  # @dataclass forgotten: still a dataclass, via its parent
            adv: float = 1.0

    with pytest.raises(
        ConfigError,
        match=r"MyMethod\.Config is not a @dataclass: put @dataclass above "
        r"`class Config` \(its fields adv are invisible otherwise\)",
    ):
        config_class(MyMethod, "synthesizer")
    # building it says the same, not "unknown key in synth: adv"
    with pytest.raises(ConfigError, match=r"MyMethod\.Config is not a @dataclass"):
        MyMethod(_ctx(), adv=2.0)

    class Child(MyMethod):  # an inherited Config is named by the class that defines it
        pass

    with pytest.raises(ConfigError, match=r"^MyMethod\.Config"):
        config_class(Child, "synthesizer")

    class MyObjective(Distiller):
        class Config:  # not a dataclass at all
            T: float = 4.0

    with pytest.raises(ConfigError, match=r"MyObjective\.Config is not a @dataclass.*fields T"):
        MyObjective(_ctx(), T=2.0)

    class NoConfig:
        pass

    with pytest.raises(ConfigError, match="distiller NoConfig has no Config"):
        config_class(NoConfig, "distiller")

    class Fine(GeneratorSynthesizer):
        @dataclass
        class Config(GeneratorSynthesizer.Config):
            adv: float = 1.0
            table: ClassVar[tuple] = ()  # not a field, decorated or not

    assert config_class(Fine, "synthesizer") is Fine.Config
    assert config_class(GeneratorSynthesizer, "synthesizer") is GeneratorSynthesizer.Config


PLUGIN_HALF = textwrap.dedent("""
    from dataclasses import dataclass
    from datafree.registry import SYNTHESIZERS
    from datafree.methods import register_method
    from datafree.synthesis.base import Synthesizer

    @SYNTHESIZERS.register("friction_foo")
    class Foo(Synthesizer):
        @dataclass
        class Config:
            pass

    register_method("friction_foo2", {"synthesizer": "friction_foo"})
""")


def test_unknown_name_says_what_each_plugin_registered(tmp_path, monkeypatch):
    from pathlib import Path

    from datafree.registry import plugin_registrations

    half = tmp_path / "friction_half.py"
    half.write_text(PLUGIN_HALF)
    empty = tmp_path / "friction_empty.py"
    empty.write_text(
        "from dataclasses import dataclass\n\nclass Forgotten:  # no decorator: registers nothing\n    pass\n"
    )
    (tmp_path / "friction_seen.py").write_text(PLUGIN_HALF.replace("friction_", "friction_seen_"))
    monkeypatch.syspath_prepend(str(tmp_path))
    import friction_seen  # noqa: F401  (imported before load_plugins: nothing new is registered then)

    try:
        assert load_plugins([Path(half), str(empty), "friction_seen"]) == [str(half), str(empty), "friction_seen"]
        regs = plugin_registrations()
        assert regs[str(half)] == [("synthesizer", "friction_foo"), ("method", "friction_foo2")]
        assert regs[str(empty)] == []
        with pytest.raises(UnknownNameError) as e:
            METHODS.get("friction_foo")
        msg = str(e.value)
        assert msg.startswith("unknown method 'friction_foo'. Did you mean 'friction_foo2'")
        assert "Known methods: " in msg
        assert f"plugin {half} registered: synthesizer 'friction_foo', method 'friction_foo2'; " in msg
        assert f"plugin {empty} registered nothing;" in msg
        assert "plugin friction_seen registered nothing new: its module had been imported already" in msg
        # every registry's errors carry it, and a caller's own list of names keeps its format
        with pytest.raises(UnknownNameError, match=r"unknown synthesizer 'friction_bar'.*registered nothing"):
            SYNTHESIZERS.get("friction_bar")
        err = MODELS.unknown("resnet19", MODELS.list() + ["timm/<name>"])
        assert "Did you mean 'resnet18'" in str(err) and f"plugin {empty} registered nothing" in str(err)
    finally:
        for reg, name in (
            (METHODS, "friction_foo2"),
            (SYNTHESIZERS, "friction_foo"),
            (METHODS, "friction_seen_foo2"),
            (SYNTHESIZERS, "friction_seen_foo"),
        ):
            reg.unregister(name)


def test_adding_a_method_doc_lists_the_inherited_config_fields():
    import ast
    import dataclasses

    from datafree.distill.base import KD, Distiller
    from datafree.synthesis.base import Synthesizer
    from datafree.synthesis.common import GeneratorSynthesizer

    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "adding_a_method.md")) as f:
        doc = f.read()
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 3:
            rows[cells[0].strip("`")] = cells[1].strip("`")
    for fld in dataclasses.fields(GeneratorSynthesizer.Config):
        assert fld.name in rows, f"docs/adding_a_method.md does not list GeneratorSynthesizer.Config.{fld.name}"
        assert ast.literal_eval(rows[fld.name]) == fld.default, fld.name
    assert not dataclasses.fields(Synthesizer.Config) and not dataclasses.fields(Distiller.Config)
    assert "`Synthesizer.Config` has no fields" in doc and "`Distiller.Config` has no fields" in doc
    for fld in dataclasses.fields(KD.Config):
        assert f"`{fld.name}`" in doc and f"`{fld.default!r}`" in doc
    assert "`(loss, logs)`" in doc and "`(logits, features,\nbn_loss)`" in doc
    assert "is not a\n@dataclass" in doc or "is not a @dataclass" in doc
    assert "pathlib.Path" in doc and "plugins: [my_plugin.py]" in doc


# -- presets: method:preset --------------------------------------------------------------------------------


def test_a_preset_is_a_method_that_extends_its_own(tmp_path):
    from datafree.methods import resolve
    from datafree.methods import method_entry, register_method
    from datafree.rundir import folder_name as method_folder
    from datafree.registry import METHODS
    from datafree.report import order_methods

    register_method(
        "mythod",
        {
            "synthesizer": "dafl",
            "synth": {"ngf": 8, "oh": 1.0},
            "datasets": {"digits": {"epochs": 3}},
            "presets": {"paper": {"about": "the paper's values", "synth": {"oh": 0.05}}},
        },
        override=True,
    )
    assert "mythod:paper" in METHODS.list("mythod*")
    e = method_entry("mythod:paper")
    assert e["synth"] == {"ngf": 8, "oh": 0.05} and e["datasets"]["digits"] == {"epochs": 3}
    assert "presets" not in e and method_entry("mythod")["synth"]["oh"] == 1.0
    cfg = resolve({"method": "mythod:paper", "dataset": "digits", "teacher": "lenet5", "student": "lenet5_half"})
    assert cfg.method == "mythod:paper" and cfg.synth["oh"] == 0.05 and cfg.epochs == 3
    assert method_folder("hidfd:released") == "hidfd@released"
    assert order_methods(["hidfd:released", "dafl", "hidfd", "cmi"]) == ["dafl", "cmi", "hidfd", "hidfd:released"]
    with pytest.raises(Exception, match="mythod:paper"):  # a typo names the preset that exists
        METHODS.get("mythod:papr")
    with pytest.raises(Exception, match="preset name"):
        register_method("bad", {"synthesizer": "dafl", "presets": {"a/b": {}}}, override=True)


def test_hidfd_released_is_a_preset_and_suites_run_it(zoo, tmp_path):
    from datafree.suites import expand, load_suite

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    suite = load_suite(os.path.join(repo, "benchmarks", "suites", "demo.yaml"))
    cells = [c for c in expand(suite, out=str(tmp_path)) if c.method == "hidfd:released"]
    assert len(cells) == 1 and cells[0].out.endswith(os.path.join("hidfd@released", "lenet5-lenet5_half-s0"))


def test_list_methods_sources_prints_each_scope_and_preset_overrides(capsys):
    from datafree.cli import main

    assert main(["list", "methods", "dafl*", "--sources"]) == 0
    out = capsys.readouterr().out.splitlines()
    plain, preset = (
        out.index(next(l for l in out if l.startswith("dafl "))),
        out.index(next(l for l in out if l.startswith("dafl:cmi "))),
    )
    plain_lines, preset_lines = out[plain + 1 : preset], out[preset + 1 :]
    pair = [l for l in plain_lines if "cifar10/resnet34-resnet18" in l]
    assert pair and "DAFL README.md:29" in pair[0]
    # datasets come before pairs; the preset keeps its method's dataset lines and replaces the pair's
    first_pair = next(i for i, l in enumerate(plain_lines) if "/" in l.split()[0])
    assert all("/" not in l.split()[0] for l in plain_lines[:first_pair])
    assert plain_lines[0].strip().startswith("camvid ")  # datasets in name order
    assert "README.md:29" not in "".join(preset_lines)
    assert any("ljrprocc/DataFree" in l for l in preset_lines) and any(
        l.strip().startswith("mnist") for l in preset_lines
    )


def test_sources_must_be_lines_and_apply_to_methods_only(capsys):
    from datafree.cli import main
    from datafree.errors import ConfigError
    from datafree.methods import register_method

    with pytest.raises(ConfigError, match="sources must map"):
        register_method("bad_sources", {"synthesizer": "dafl", "sources": {"cifar10": ["a", "b"]}}, override=True)
    assert main(["list", "models", "--sources"]) == 2
    assert "datafree list methods --sources" in capsys.readouterr().err
