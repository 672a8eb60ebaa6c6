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
    from datafree.config import parse_overrides, resolve

    cfg = resolve({"method": "dafl", "dataset": "mnist", "teacher": "lenet5", "student": "lenet5_half"},
                  parse_overrides(["channels_last=off", "amp=off", "cpu_malloc=default"]))
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
