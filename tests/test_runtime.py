"""The process-level speed settings (datafree/runtime.py): channels_last and the CPU allocator."""

import platform
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.nn import functional as F

from datafree.errors import DatafreeError
from datafree.models import create_model
from datafree.runtime import tune_cpu_malloc, use_channels_last

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def test_channels_last_auto_is_on_for_cpu_and_cuda_and_off_means_off():
    assert use_channels_last("auto", torch.device("cpu"))
    assert use_channels_last("auto", torch.device("cuda"))
    assert not use_channels_last("auto", torch.device("mps"))
    assert use_channels_last("on", torch.device("mps"))
    assert not use_channels_last("off", torch.device("cpu"))


def test_on_off_switches_survive_yaml_booleans():
    """YAML 1.1 reads `off` as False: `--set channels_last=off amp=off` must still mean off, not 'False'."""
    from datafree.config import parse_overrides
    from datafree.methods import resolve

    cfg = resolve(
        {"method": "dafl", "dataset": "mnist", "teacher": "lenet5", "student": "lenet5_half"},
        parse_overrides(["channels_last=off", "amp=off", "cpu_malloc=default"]),
    )
    assert (cfg.channels_last, cfg.amp, cfg.cpu_malloc) == ("off", "off", "default")
    assert not use_channels_last(cfg.channels_last, torch.device("cpu"))
    assert resolve({"method": "dafl"}, parse_overrides(["channels_last=on"])).channels_last == "on"


def test_bad_settings_name_the_known_values():
    with pytest.raises(DatafreeError, match="channels_last.*Known"):
        use_channels_last("yes", torch.device("cpu"))
    with pytest.raises(DatafreeError, match="Did you mean 'tuned'"):
        tune_cpu_malloc("tune")


def test_kd_step_in_channels_last_gives_the_same_loss_and_gradients():
    """The layout changes the convolutions' summation order, nothing else."""
    torch.manual_seed(0)
    teacher = create_model("resnet8", 10).eval().requires_grad_(False)
    student = create_model("resnet8", 10)
    x = torch.rand(8, 3, 32, 32)
    out = {}
    for cl in (False, True):
        t, s, inp = teacher, student, x
        if cl:
            t = teacher.to(memory_format=torch.channels_last)
            s = student.to(memory_format=torch.channels_last)
            inp = x.contiguous(memory_format=torch.channels_last)
        s.zero_grad(set_to_none=True)
        with torch.no_grad():
            tl = t(inp)
        loss = F.kl_div(F.log_softmax(s(inp), 1), F.softmax(tl, 1), reduction="batchmean")
        loss.backward()
        out[cl] = (loss.detach(), [p.grad.clone() for p in s.parameters()])
    assert torch.allclose(out[False][0], out[True][0], rtol=1e-4, atol=1e-6)
    for a, b in zip(out[False][1], out[True][1]):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)


_FAULTS = textwrap.dedent("""
    import resource, sys, torch
    from datafree.runtime import tune_cpu_malloc
    tuned = tune_cpu_malloc(sys.argv[1])
    x = torch.rand(320, 32, 32, 32)  # 40 MiB: above glibc's largest mmap threshold

    def step():  # three 40 MiB temporaries, as in a network's forward
        y = torch.relu(x)
        z = y * 2
        del y
        return (z + 1).sum()

    for _ in range(15):  # warm-up: the heap grows until freed blocks coalesce into reusable ones (5-10 steps)
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    print(int(tuned), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(not GLIBC, reason="the allocator tuning is for glibc")
def test_tuned_allocator_reuses_pages_for_large_tensors():
    """Untuned, each 40 MiB temporary is a fresh mmap: ~10,000 page faults apiece, 30,000 a step. Tuned, after
    a warm-up, the heap's pages are reused (an occasional step still grows it)."""

    def faults(setting):
        out = subprocess.run([sys.executable, "-c", _FAULTS, setting], capture_output=True, text=True, check=True)
        tuned, n = out.stdout.split()
        return int(tuned), int(n)

    tuned, n_tuned = faults("tuned")
    untouched, n_default = faults("default")
    assert (tuned, untouched) == (1, 0)
    assert n_default > 10 * 20000  # the premise: glibc unmaps and re-faults every large block
    assert n_tuned < n_default / 5


# --------------------------------------------------------------------------- precision (amp), docs/precision.md


def test_amp_auto_resolves_per_device_and_synthesis_precision():
    from datafree.runtime import resolve_amp, synthesis_amp

    assert [resolve_amp("auto", d) for d in ("cpu", "cuda", "mps")] == ["off", "bf16", "off"]
    assert [resolve_amp(s, "cuda") for s in ("off", "bf16", "fp16")] == ["off", "bf16", "fp16"]
    # fp32 synthesis turns only auto into off; an explicit setting is what synthesis runs at
    assert synthesis_amp("auto", "cuda", "fp32") == "off" and synthesis_amp("auto", "cuda", "amp") == "bf16"
    assert [synthesis_amp(s, "cuda", "fp32") for s in ("off", "bf16", "fp16")] == ["off", "bf16", "fp16"]
    assert synthesis_amp("auto", "cpu", "fp32") == synthesis_amp("auto", "cpu", "amp") == "off"
    with pytest.raises(DatafreeError, match="amp"):
        resolve_amp("bfloat16", "cuda")
    with pytest.raises(DatafreeError, match="synthesis_precision"):
        synthesis_amp("auto", "cuda", "fp64")


def test_amp_for_synthesis_policy_objects():
    from datafree.synthesis.base import Amp

    run = Amp(torch.device("cuda"), "auto")  # no GPU touched: a policy only
    fp32 = run.for_synthesis("fp32")
    assert (run.mode, fp32.mode, fp32.setting, fp32.exclusive) == ("bf16", "off", "auto", True)
    assert run.for_synthesis("amp") is run
    forced = Amp(torch.device("cuda"), "bf16")
    assert forced.for_synthesis("fp32") is forced  # amp=bf16 forces bf16 synthesis too
    cpu = Amp(torch.device("cpu"), "auto")
    assert cpu.for_synthesis("fp32") is cpu and cpu.mode == "off" and not cpu.exclusive


def test_exclusive_fp32_precision_turns_an_outer_autocast_off():
    """A synthesis call made inside the run's bf16 block (perf's floors, say) still runs in fp32."""
    from datafree.synthesis.base import Amp

    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    fp32 = Amp(torch.device("cpu"), "off", exclusive=True)
    plain_off = Amp(torch.device("cpu"), "off")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with fp32.autocast():
            assert lin(x).dtype == torch.float32
        with plain_off.autocast():
            assert lin(x).dtype == torch.bfloat16
    assert Amp(torch.device("cpu"), "bf16").exclusive is False  # only an fp32 policy can be exclusive


def _bn_probe():
    """Conv(1x1, weight 1) -> BN(running mean 100, running var 0.09): activations of about 100 that differ by 0.3."""
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1, bias=False), torch.nn.BatchNorm2d(1)).eval()
    with torch.no_grad():
        m[0].weight.fill_(1.0)
        m[1].running_mean.fill_(100.0)
        m[1].running_var.fill_(0.09)
    return m.requires_grad_(False), torch.tensor([100.3, 99.7]).view(2, 1, 1, 1)


def test_bn_term_of_large_activations_under_bf16_and_fp32_precision(monkeypatch):
    """Why the inversion methods synthesise in fp32: the BN term is a difference of batch statistics of large
    activations from the running ones. Batch [100.3, 99.7] against running mean 100 and var 0.09 (float32(0.09)
    = 0.0900000035762787): in fp32 the inputs are float32(100.3) = 100.30000305, float32(99.7) = 99.69999695,
    so mean 100 and var 0.3000030518^2 = 0.0900018311, term |0.09 - var| + |100 - mean| = 1.8274877e-6 (float64
    on the float32 inputs). bf16 (8 bits of mantissa, spacing 0.5 in [64, 128)) rounds them to 100.5 and 99.5:
    var 0.25, term 0.25 - 0.0900000036 = 0.1599999964. With the CPU taken for CUDA (amp=auto is bf16 there), the
    synthesis policy of a synthesizer that declares fp32 gives the fp32 value inside the run's bf16 block."""
    import datafree.runtime as runtime
    from datafree.synthesis.base import Amp
    from datafree.synthesis.losses import BNStatistics

    m, x = _bn_probe()
    eps = torch.finfo(torch.float32).eps

    def term(amp, outer=None):
        bn = BNStatistics(m)
        with bn, outer.autocast() if outer else amp.autocast(), amp.autocast():
            m(x)
        return float(bn.loss())

    fp32, bf16 = term(Amp("cpu", "off")), term(Amp("cpu", "bf16"))
    # fp32: var is one rounded square of a value near 0.3 (error a few ulp of 0.09)
    assert fp32 == pytest.approx(1.8274877220392227e-06, abs=16 * eps * 0.09)
    # bf16: exact inputs (100.5, 99.5), exact statistics; only 0.25 - float32(0.09) is rounded (ulp of 0.25)
    assert bf16 == pytest.approx(0.1599999964237213, abs=4 * eps * 0.25)
    monkeypatch.setattr(runtime, "resolve_amp", lambda s, d: {"auto": "bf16"}.get(s, s))  # the CPU as CUDA
    run = Amp("cpu", "auto")
    assert run.mode == "bf16"
    assert term(run.for_synthesis("fp32"), outer=run) == pytest.approx(fp32, abs=16 * eps * 0.09)
    assert term(run.for_synthesis("amp"), outer=run) == pytest.approx(bf16, abs=4 * eps * 0.25)


def _conv_dtypes(model):
    seen = []
    handles = [
        m.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    return seen, handles


#: one synthesis round in milliseconds (the digits teacher is LeNet-5: no BN term, the convolutions are what is seen)
_SMALL_SYNTH = {
    "cmi": {"g_steps": 2, "synthesis_batch_size": 8, "ngf": 8, "head_dim": 16, "bank_size": 64, "n_neg": 16},
    "fast": {"g_steps": 2, "synthesis_batch_size": 8, "ngf": 8},
    "dfq": {"synthesis_batch_size": 8, "ngf": 8},
    "dafl": {"synthesis_batch_size": 8, "ngf": 8},
}


@pytest.mark.parametrize(
    "method, synthesis",
    [
        ("deepinv", torch.float32),
        ("cmi", torch.float32),
        ("fast", torch.float32),
        ("dfq", torch.float32),
        ("dafl", torch.bfloat16),
    ],
)
def test_auto_amp_precision_on_cuda_fp32_synthesis_for_the_inversion_methods(
    zoo, tmp_path, monkeypatch, method, synthesis
):
    """amp=auto on CUDA (the CPU taken for CUDA: auto resolves to bf16): the teacher's convolutions run in fp32
    during the synthesis of DeepInversion, CMI, Fast-DFKD and DFQ, in bf16 during DAFL's; the student's KD step
    stays bf16. The synthesizer's view of the run's Context shares everything but amp."""
    import datafree.runtime as runtime
    from conftest import engine_for

    monkeypatch.setattr(runtime, "resolve_amp", lambda s, d: {"auto": "bf16"}.get(s, s))
    e = engine_for(method, tmp_path / method, device="cpu", synth=_SMALL_SYNTH.get(method, {}))
    assert e.amp.mode == "bf16"
    assert e.synth.ctx.amp.mode == ("off" if synthesis == torch.float32 else "bf16")
    e.ctx.epoch = 7
    assert e.synth.ctx.epoch == 7 and e.synth.ctx.teacher is e.teacher and e.synth.ctx.cfg is e.cfg
    seen, handles = _conv_dtypes(e.teacher)
    try:
        e.synth.synthesize()
        assert seen and set(seen) == {synthesis}
        gen = e.synth.generator if method == "dfq" else torch.nn.Identity()
        g_seen, g_handles = _conv_dtypes(gen)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # a block around sample() does not leak in
            batch = e.synth.sample(8)
        for h in g_handles:
            h.remove()
        if method == "dfq":  # its sample() runs the generator (DAFL's hands back its last batch): in fp32
            assert g_seen and set(g_seen) == {synthesis}
        x = batch[0] if isinstance(batch, tuple) else batch
        s_seen, s_handles = _conv_dtypes(e.student)
        e.trainer.step(e.ctx.to_device(x), None)
        assert s_seen and set(s_seen) == {torch.bfloat16}
        for h in s_handles:
            h.remove()
    finally:
        for h in handles:
            h.remove()
        e.synth.close()


def test_explicit_bf16_amp_forces_bf16_synthesis_precision(zoo, tmp_path):
    """amp=bf16 (here on the CPU, where autocast bf16 works) runs DeepInversion's synthesis in bf16 too, and the
    run's summary records both precisions."""
    from conftest import engine_for

    e = engine_for("deepinv", tmp_path / "d", device="cpu", amp="bf16")
    assert e.synth.ctx is e.ctx and e.synth.ctx.amp.mode == "bf16"
    seen, handles = _conv_dtypes(e.teacher)
    try:
        e.synth.synthesize()
    finally:
        for h in handles:
            h.remove()
        e.synth.close()
    assert set(seen) == {torch.bfloat16}


def _legacy_fields(cfg, kind):
    """The identity's fields as identity.run_identity computed them before synthesis precision and the CPU thread
    count were recorded (no teacher file, no saved sets, no renamed models): the resolved config minus the neutral
    keys, device and amp resolved."""
    from datafree.config import to_dict
    from datafree.data import get_spec
    from datafree.identity import NEUTRAL_KEYS
    from datafree.results import flatten

    conf = to_dict(cfg)
    for k in NEUTRAL_KEYS:
        conf.pop(k, None)
    fields = {k: v for k, v in flatten(conf).items() if v is not None}
    fields["device"] = kind
    fields["amp"] = cfg.amp if cfg.amp != "auto" else ("bf16" if kind == "cuda" else "off")
    spec = get_spec(cfg.dataset)
    fields.update({"dataset.channels": spec.channels, "dataset.size": spec.size, "dataset.classes": spec.num_classes})
    return fields


_PRECISION_METHODS = [
    "deepinv",
    "deepinv:paper",
    "cmi",
    "fast10",
    "fast2",
    "dfq",
    "dafl",
    "zskt",
    "dfad",
    "mbdfkd",
    "predfkd",
    "cudfkd",
]


@pytest.mark.parametrize("method", _PRECISION_METHODS)
def test_cpu_fingerprints_unchanged_by_synthesis_precision_amp(method):
    """On the CPU both phases are fp32 whatever the method declares: the fingerprints are those of before, so the
    committed CPU records (results/demo, results/mnist) stay reusable."""
    from datafree.identity import run_identity
    from datafree.methods import resolve
    from datafree.results import Identity, fingerprint_of, same_run

    for dataset, teacher, student in (("cifar10", "resnet34", "resnet18"), ("mnist", "lenet5", "lenet5_half")):
        cfg = resolve({"method": method, "dataset": dataset, "teacher": teacher, "student": student})
        ident = run_identity(cfg, teacher_file=None, device_kind="cpu")
        assert "synth_amp" not in ident.fields and ident.fields["amp"] == "off"
        legacy = _legacy_fields(cfg, "cpu")  # the identity of a record made before both fields
        assert {k: v for k, v in ident.fields.items() if k != "threads"} == legacy
        old = Identity(fingerprint_of(legacy), legacy)
        assert same_run(old, ident, recorded_threads=ident.fields["threads"])  # reused at the thread count it ran
        assert not same_run(old, ident, recorded_threads=ident.fields["threads"] + 1)  # not at another


@pytest.mark.parametrize("method", _PRECISION_METHODS)
def test_cuda_fingerprint_records_synthesis_precision_amp(method):
    """On CUDA under amp=auto the fingerprint of an fp32-synthesis method says so (synth_amp: off), so the records
    made when its synthesis ran under bf16 are not taken for the new default; they are what amp=bf16 asks for.
    The other methods keep their CUDA fingerprints."""
    from datafree.identity import resolved_precision, run_identity
    from datafree.methods import resolve
    from datafree.registry import SYNTHESIZERS
    from datafree.results import fingerprint_of

    base = {"method": method, "dataset": "cifar10", "teacher": "resnet34", "student": "resnet18"}
    auto, forced = resolve(base), resolve({**base, "amp": "bf16"})
    a = run_identity(auto, teacher_file=None, device_kind="cuda")
    b = run_identity(forced, teacher_file=None, device_kind="cuda")
    assert a.fields["amp"] == b.fields["amp"] == "bf16" and "synth_amp" not in b.fields
    legacy = fingerprint_of(_legacy_fields(forced, "cuda"))
    assert b.fingerprint == legacy == fingerprint_of(_legacy_fields(auto, "cuda"))
    assert "threads" not in a.fields  # a GPU run's arithmetic does not follow the host's thread count
    fp32 = SYNTHESIZERS.get(auto.synthesizer).synthesis_precision == "fp32"
    assert fp32 == (auto.synthesizer in ("deepinv", "cmi", "fast", "dfq"))
    if fp32:
        assert a.fields["synth_amp"] == "off" and a.fingerprint != b.fingerprint
        assert resolved_precision(auto, "cuda") == {"device": "cuda", "synthesis": "off", "distillation": "bf16"}
    else:
        assert "synth_amp" not in a.fields and a.fingerprint == b.fingerprint
    off = run_identity(resolve({**base, "amp": "off"}), teacher_file=None, device_kind="cuda")
    assert off.fields["amp"] == "off" and "synth_amp" not in off.fields


def test_perf_table_names_each_phase_precision():
    from datafree.perf import _precision_note

    assert _precision_note({"synthesis": "off", "distillation": "bf16"}) == " (synthesis fp32, student bf16)"
    assert _precision_note({"synthesis": "off", "distillation": "off"}) == "" and _precision_note(None) == ""


def test_summary_records_each_phase_precision_amp(zoo, tmp_path, monkeypatch):
    """summary.json says what synthesis and the student's steps ran at: fp32 on the CPU, bf16 for both under
    amp=bf16, and, with the CPU taken for CUDA, fp32 synthesis beside bf16 steps for DeepInversion."""
    import datafree.runtime as runtime
    from conftest import tiny
    from datafree.engine import run

    assert run(tiny("deepinv", tmp_path / "a", device="cpu"))["precision"] == {
        "synthesis": "off",
        "distillation": "off",
    }
    assert run(tiny("deepinv", tmp_path / "b", device="cpu", amp="bf16"))["precision"] == {
        "synthesis": "bf16",
        "distillation": "bf16",
    }
    monkeypatch.setattr(runtime, "resolve_amp", lambda s, d: {"auto": "bf16"}.get(s, s))
    assert run(tiny("deepinv", tmp_path / "c", device="cpu"))["precision"] == {
        "synthesis": "off",
        "distillation": "bf16",
    }
