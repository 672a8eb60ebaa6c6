"""Where a method's synthesis round or student step spends its time: a torch.profiler table.

    python benchmarks/perf/profile_method.py deepinv mnist --phase synthesis --iters 20
    python benchmarks/perf/profile_method.py zskt mnist --phase student --steps 20

The method is built as `datafree perf` builds it (datafree.perf.build: the method's resolved config at that
scale, untrained models, synthetic tensors). The table lists the operators with the most self CPU time (self
CUDA time on a GPU), after one untimed warm-up call. Use it to explain a ratio to the floor in results/perf.md.
"""

import argparse
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from datafree.perf import build, resolve_run, round_iterations


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("method")
    p.add_argument("scale", choices=["mnist", "cifar"])
    p.add_argument("--phase", choices=["synthesis", "student"], default="synthesis")
    p.add_argument("--iters", type=int, default=10, help="inner iterations of the profiled round")
    p.add_argument("--steps", type=int, default=10, help="student steps profiled")
    p.add_argument("--device", default="auto")
    p.add_argument("--rows", type=int, default=25)
    args = p.parse_args(argv)

    field = round_iterations(resolve_run(args.method, args.scale, args.device))[0]
    over = {"synth": {field: args.iters}} if field else {}
    ctx, synth, distiller, cfg = build(args.method, args.scale, args.device, over)

    def student():
        for _ in range(args.steps):
            batch = synth.sample(cfg.batch_size)
            x, y = batch if isinstance(batch, tuple) else (batch, None)
            distiller.step(ctx.to_device(x), y)

    work = synth.synthesize if args.phase == "synthesis" else student
    if args.phase == "student":
        synth.synthesize()
    work()  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        work()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if ctx.device.type == "cuda" else "self_cpu_time_total"
    print(
        f"{args.method} {args.scale} {args.phase} (batch {cfg.batch_size}, "
        f"synthesis batch {getattr(synth.cfg, 'synthesis_batch_size', '-')}, {field}={args.iters})"
    )
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows))
    synth.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
