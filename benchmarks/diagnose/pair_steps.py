"""What one step of a teacher/student pair costs on this machine: the figures that size a suite's budgets.

    OMP_NUM_THREADS=1 python benchmarks/diagnose/pair_steps.py                      # the mnist_bn candidates
    OMP_NUM_THREADS=1 python benchmarks/diagnose/pair_steps.py --pairs resnet20:resnet8 --batch 256

For each pair, at one torch thread unless --threads says otherwise, untrained models (the cost does not depend
on the weights), images of the dataset's shape, the engine's CPU settings (channels_last, the tuned allocator):

* KD step: the teacher's forward (no grad), the student's forward and backward, an SGD step;
* inversion step: the teacher's forward and backward to the pixels (DeepInversion's core, no BN hooks);
* generator step / generator forward: a DCGAN generator (nz 256) of the given widths, its forward and backward
  through the teacher, and its forward alone (what a generator method adds to each KD step).

Each figure is the median of --repeats timings after 3 untimed calls, in milliseconds.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from datafree.models import create_model
from datafree.models.generators import dcgan
from datafree.perf import timeit
from datafree.runtime import tune_cpu_malloc, use_channels_last


CPU = torch.device("cpu")


def timed(fn, repeats: int) -> float:
    return timeit(fn, CPU, repeats, warmup=3)["median_ms"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", default="lenet5_bn:lenet5_half,resnet20:resnet8,wrn16_2:wrn16_1")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--ngf", default="16,32", help="generator widths to time")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tune_cpu_malloc("tuned")
    cl = use_channels_last("auto", CPU)
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = torch.randn(a.batch, a.channels, a.size, a.size).to(memory_format=fmt)
    print(
        f"batch {a.batch} at {a.channels}x{a.size}x{a.size}, {torch.get_num_threads()} thread(s), "
        f"channels_last {cl}, torch {torch.__version__}; ms, median of {a.repeats}"
    )
    for pair in a.pairs.split(","):
        tname, sname = pair.split(":")
        teacher = create_model(tname, 10, a.channels, a.size).to(memory_format=fmt).eval()
        student = create_model(sname, 10, a.channels, a.size).to(memory_format=fmt).train()
        for q in teacher.parameters():
            q.requires_grad_(False)
        opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)

        def kd():
            with torch.no_grad():
                t = teacher(x)
            loss = F.kl_div(F.log_softmax(student(x), 1), F.softmax(t, 1), reduction="batchmean")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        pix = x.clone().requires_grad_(True)

        def inversion():
            pix.grad = None
            teacher(pix).logsumexp(1).mean().backward()

        row = [f"{pair:24s} KD step {timed(kd, a.repeats):8.1f}", f"inversion step {timed(inversion, a.repeats):8.1f}"]
        for ngf in (int(n) for n in a.ngf.split(",") if n):
            gen = dcgan(nz=256, ngf=ngf, img_size=a.size, nc=a.channels).train()
            gopt = torch.optim.Adam(gen.parameters(), 1e-3)
            z = torch.randn(a.batch, 256)

            def gstep():
                gopt.zero_grad(set_to_none=True)
                teacher(gen(z).contiguous(memory_format=fmt)).logsumexp(1).mean().backward()
                gopt.step()

            def gfwd():
                with torch.no_grad():
                    gen(z)

            row.append(f"G{ngf} step {timed(gstep, a.repeats):8.1f}")
            row.append(f"G{ngf} fwd {timed(gfwd, a.repeats):7.1f}")
        print("   ".join(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
