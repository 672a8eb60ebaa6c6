"""datafree perf on tiny settings: every phase is timed, and the student floor counts the generator forwards the
method really runs per student step."""

import pytest
import torch

from datafree.perf import measure_method, perf_table

SMALL = {"batch_size": 16, "synth": {"synthesis_batch_size": 16, "ngf": 8}}


@pytest.mark.parametrize("method, per_step", [("dfad", 1.0), ("dafl", 0.0), ("zskt", 0.1), ("deepinv", 0.0)])
def test_round_step_floor_and_generator_forwards(method, per_step):
    over = dict(SMALL)
    if method == "deepinv":
        over = {"batch_size": 16, "synth": {"synthesis_batch_size": 16}}
    if method == "zskt":
        over = {**SMALL, "kd_steps": 10}
    rec = measure_method(method, "mnist", repeats=1, warmup=0, max_iters=10, device="cpu", overrides=over)
    assert rec["synthesis_round"]["median_ms"] > 0  # DFAD's first round skips its generator: perf times a later one
    assert rec["student_step"]["median_ms"] > 0 and rec["floor"]["student_step"]["median_ms"] > 0
    assert rec["floor"]["generator_forwards_per_step"] == pytest.approx(per_step)
    assert rec["student_ratio"] > 0 and rec["synthesis_ratio"] > 0
    assert method in perf_table([rec])


@pytest.mark.parametrize("method", ["cmi", "fast10"])
def test_synthesis_floor_runs_the_generator_of_methods_without_generate(method):
    """CMI and Fast drive their generators in their own loops (no generate()); their floor must still run it."""
    from datafree.perf import build, measure_floors

    ctx, synth, distiller, cfg = build(
        method, "mnist", "cpu", {"batch_size": 8, "synth": {"synthesis_batch_size": 8, "ngf": 8}}
    )
    # only the floor may run the generator here: the method's own round and sampling are stubbed out
    synth.synthesize = lambda: {}
    synth.sample = lambda n: torch.zeros(n, *ctx.spec.shape)
    calls = []
    synth.generator.register_forward_hook(lambda *a: calls.append(1))
    floors = measure_floors(ctx, synth, distiller, cfg, repeats=1, warmup=0)
    assert calls and floors["generator_forwards_per_step"] == 0


def test_pair_steps_times_every_step_kind(capsys):
    """benchmarks/diagnose/pair_steps.py (the step costs that size a suite's budgets) on a tiny batch."""
    import importlib.util
    import os

    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "diagnose", "pair_steps.py"
    )
    spec = importlib.util.spec_from_file_location("pair_steps", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    try:
        assert mod.main(["--pairs", "lenet5_bn:lenet5_half", "--batch", "4", "--ngf", "8", "--repeats", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    row = next(l for l in out.splitlines() if l.startswith("lenet5_bn:lenet5_half"))
    for kind in ("KD step", "inversion step", "G8 step", "G8 fwd"):
        assert kind in row
    import re

    times = [float(v) for v in re.findall(r"(?:step|fwd)\s+([0-9.]+)", row)]
    assert len(times) == 4 and all(t > 0 for t in times)
