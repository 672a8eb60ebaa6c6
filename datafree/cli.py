"""The ``datafree`` command line.

    datafree list models|methods|datasets|synthesizers|distillers|generators [PATTERN]
    datafree train-teacher --dataset D --model M [--recipe datafree|cmi] [key=value ...]
    datafree distill --method M --teacher T --student S --dataset D [key=value ...]
    datafree bench SUITE [--dry-run] [--only PATTERN] [--seeds 0,1,2] [--executor local|slurm]
    datafree table DIR [--reference benchmarks/reference/<table>.yaml]
    datafree plot DIR
    datafree demo
    datafree data download|check NAME
    datafree export RUN_DIR --out DIR [--overwrite]

Bad input (unknown names, missing data, unusable checkpoints or configs,
a full disk) prints one ``error:`` line and exits with status 2; a run that
diverged exits with status 3.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional

from . import __version__
from .config import config_yaml, deep_merge, load_yaml, parse_overrides
from .errors import ConfigError, DatafreeError, UnknownNameError
from .registry import all_registries, load_plugins

#: exit codes: 2 bad input (one ``error:`` line), 3 the run diverged (its summary says where)
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module (or .py file) that registers models/methods; repeatable",
    )
    p.add_argument("--data-root", default=None, help="folder holding datasets (default: $DATAFREE_DATA, ./data)")


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML run config (e.g. a previous run's config.yaml)")
    p.add_argument("--out", help="run directory (default: results/runs/<dataset>/<method>/<pair>-s<seed>)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run in --out and start again")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. synth.lr_g=1e-3 epochs=5")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="datafree", description="Data-free knowledge distillation benchmark toolkit")
    parser.add_argument("--version", action="version", version=f"datafree {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered models, methods, datasets, ...")
    p.add_argument("what", choices=["models", "methods", "datasets", "synthesizers", "distillers", "generators"])
    p.add_argument("pattern", nargs="?", default="*", help="shell wildcard, e.g. 'resnet*'")
    p.add_argument(
        "--sources",
        action="store_true",
        help="methods: where each dataset's and pair's values come from (docs/fidelity.md in full)",
    )
    _common(p)

    p = sub.add_parser("train-teacher", help="train a model on real data and add it to model_zoo/")
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--zoo", help="model zoo folder (default: $DATAFREE_ZOO or ./model_zoo)")
    p.add_argument("--force", action="store_true", help="retrain even if the zoo has this teacher")
    p.add_argument(
        "--recipe",
        help="teacher recipe: datafree (ours, the default) or cmi (the CMI repository's "
        "train_scratch.py); see docs/teachers.md",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value")
    _common(p)

    p = sub.add_parser("distill", help="run one distillation")
    p.add_argument("--method", help="a method or preset (`datafree list methods`), e.g. dafl, cmi, hidfd:released")
    p.add_argument("--teacher", help="model name (looked up in model_zoo/) or checkpoint path")
    p.add_argument("--student", help="the student architecture (`datafree list models`), e.g. resnet18")
    p.add_argument("--dataset", help="the dataset (`datafree list datasets`), or imagefolder:<path>")
    _run_options(p)
    _common(p)

    p = sub.add_parser("inspect", help="what a teacher checkpoint holds (architecture, layout, classes, sha256)")
    p.add_argument("path", help="checkpoint file, or a model name looked up in the zoo for --dataset")
    p.add_argument("--dataset", help="check the checkpoint against this dataset and measure its test accuracy")
    p.add_argument("--arch", help="the architecture of a file that does not say (a bare state dict)")
    p.add_argument("--zoo", help="model zoo folder (default: $DATAFREE_ZOO or ./model_zoo)")
    p.add_argument("--device", default="cpu", help="device for the accuracy (default cpu)")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    _common(p)

    p = sub.add_parser("table", help="markdown tables from the run records under DIR")
    p.add_argument("dir")
    p.add_argument("--out", help="markdown file to write (default: DIR/README.md; '-' prints only)")
    p.add_argument("--title", default=None)
    p.add_argument("--metric", choices=["last", "best"], default="last")
    p.add_argument("--reference", help="YAML of published numbers to set beside ours (benchmarks/reference/*.yaml)")
    p.add_argument("--note", help="a paragraph to put under the title (machine, settings)")
    p.add_argument(
        "--index",
        action="store_true",
        help="write DIR/README.md with the accuracy tables of every results folder under DIR",
    )
    _common(p)

    p = sub.add_parser("bench", help="run a benchmark suite: every method x pair x seed, resumable")
    p.add_argument("suite", help="suite file or name (benchmarks/suites/<name>.yaml)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their status; run nothing")
    p.add_argument(
        "--only",
        help="run only cells whose name (dataset/method/teacher-student/sSEED) matches "
        "this pattern or substring; comma-separated for several",
    )
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (default: the suite's)")
    p.add_argument("--out", help="results folder (default: the suite's out)")
    p.add_argument("--executor", default="local", help="local (default), slurm, or submitit-local")
    p.add_argument("--gpus", type=int, default=None, help="local: GPUs to use, one cell each (default: all visible)")
    p.add_argument("--jobs", type=int, default=1, help="local, CPU only: cells run at once (cores shared equally)")
    p.add_argument("--partition", help="slurm partition")
    p.add_argument("--time", type=int, default=None, help="slurm time limit per cell, minutes")
    p.add_argument("--gpus-per-job", type=int, default=1)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to every cell")
    _common(p)

    p = sub.add_parser("plot", help="accuracy curves of the runs under DIR as a PNG")
    p.add_argument("dir")
    p.add_argument("--out", help="PNG to write (default: DIR/curves.png)")
    _common(p)

    p = sub.add_parser("demo", help="train a small teacher on digits and run every method with a small budget")
    p.add_argument("--suite", default=None, help="suite file (default: benchmarks/suites/demo.yaml)")
    p.add_argument(
        "--out",
        default=os.path.join("results", "runs", "demo"),
        help="folder of the demo's runs and tables (default results/runs/demo, git-ignored; "
        "results/demo holds our committed run)",
    )
    p.add_argument("--fresh", action="store_true", help="delete earlier demo runs first")
    p.add_argument(
        "--presets",
        action="store_true",
        help="run the presets too (hidfd:released, cmi:fixed, ...: left out by default, so that the demo stays short)",
    )
    p.add_argument(
        "--write-costs",
        action="store_true",
        help="afterwards, rewrite the measured costs behind the demo's estimate (the suite's <suite>_costs.yaml) "
        "from this demo's records",
    )
    _common(p)

    p = sub.add_parser("perf", help="time each method's synthesis round and student step against the floor")
    p.add_argument(
        "--methods",
        default="dafl,zskt,dfad,deepinv,dfq,cmi,mbdfkd,predfkd,cudfkd,fast2,fast5,fast10,hidfd",
        help="comma-separated methods",
    )
    p.add_argument(
        "--scales",
        default="mnist,cifar",
        help="mnist (lenet5->lenet5_half), cifar (resnet34->resnet18), mnist_seg (deeplab_tiny->deeplab_tiny_half), "
        "nyuv2 (deeplabv3_resnet50->deeplabv3_mobilenet); a segmentation scale times the methods that serve it",
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed calls before each timing (3: on a CPU the heap settles after 2-3 iterations)",
    )
    p.add_argument(
        "--max-iters",
        type=int,
        default=20,
        help="time at most this many inner iterations of a round and scale to the full round",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=os.path.join("results", "perf"), help="folder for perf.json and perf.md")
    _common(p)

    p = sub.add_parser(
        "export",
        help="write a finished run's synthetic pool as an image folder (one PNG per image, "
        "one folder per teacher class, manifest.json)",
    )
    p.add_argument("run_dir", help="the run directory (of cmi, deepinv, fast, ...: a method that keeps a pool)")
    p.add_argument("--out", required=True, help="the folder to write (refused if not empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    p.add_argument(
        "--teacher",
        help="the teacher file to label with (default: the one the run's config names, "
        "checked against the sha256 the run recorded)",
    )
    p.add_argument("--zoo", help="model zoo folder (default: the run's model_zoo, $DATAFREE_ZOO or ./model_zoo)")
    p.add_argument("--device", default="auto", help="device for the teacher's labels (default auto)")
    _common(p)

    p = sub.add_parser("data", help="download or check a dataset")
    p.add_argument("action", choices=["download", "check"])
    p.add_argument("name")
    _common(p)
    return parser


# --------------------------------------------------------------------------- commands


def cmd_list(args) -> int:
    """Names and one-line facts, from the method files and datafree/catalog.py: no torch is imported unless a
    plugin is (or the catalog is older than the sources, when the live registries answer)."""
    from . import catalog

    load_plugins(args.plugin)
    if args.sources and args.what != "methods":
        raise ConfigError(
            f"--sources lists where methods' values come from: use `datafree list methods --sources`, "
            f"not `datafree list {args.what}`"
        )
    if args.what == "methods":
        from .methods import describe, describe_sources, load_method_entries

        load_method_entries()
        names = all_registries()["methods"].list(args.pattern)
        width = max((len(n) for n in names), default=0)
        for n in names:
            print(f"{n:<{width}}  {describe(n)}")
            if args.sources:
                for line in describe_sources(n):
                    print(f"    {line}")
        return 0
    names = catalog.names(args.what, args.pattern)
    if args.what == "datasets":
        for n in names:
            s = catalog.dataset_facts(n)
            task = "" if s["task"] == "classification" else f", {s['task']} (a class per pixel)"
            print(f"{n:<14} {s['channels']}x{s['size']}x{s['size']}, {s['num_classes']} classes{task}")
        if args.pattern == "*":
            print("imagefolder:<path>  any ImageFolder tree with train/ and val/")
    elif args.what == "models":
        for n in names:
            task = catalog.model_task(n)
            print(n if task == "classification" else f"{n:<20} {task}")
        if args.pattern == "*":
            print("timm/<name>  (any timm model, e.g. timm/resnet18)")
    else:
        for n in names:
            print(n)
    return 0


def cmd_inspect(args) -> int:
    from .methods import check_arch
    from .teacher import load_teacher, test_accuracy

    load_plugins(args.plugin)
    if args.arch:
        check_arch(args.arch)
    model, record = load_teacher(args.path, dataset=args.dataset, arch=args.arch, model_zoo=args.zoo)

    def accuracy() -> float:  # the dataset's test split may be missing: the record is printed first
        return round(test_accuracy(model.to(args.device), args.dataset, args.data_root, args.device), 2)

    if args.json:
        import json

        if args.dataset:
            record.update(test_accuracy=accuracy(), measured_on=args.dataset)
        print(json.dumps(record, indent=2, sort_keys=True))
        return 0
    width = max(len(k) for k in list(record) + ["test_accuracy"])
    for k, v in record.items():
        print(f"{k:<{width}}  {f'{v:.2f}' if isinstance(v, float) else v}")
    if args.dataset:
        sys.stdout.flush()
        print(f"{'test_accuracy':<{width}}  {accuracy()} ({args.dataset} test split)")
    return 0


def _user_config(args) -> Dict[str, Any]:
    user: Dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    for key in ("method", "teacher", "student", "dataset", "seed", "device", "out"):
        v = getattr(args, key, None)
        if v is not None:
            user[key] = v
    if getattr(args, "data_root", None):
        user["data_root"] = args.data_root
    if args.plugin:
        user["plugins"] = list(dict.fromkeys(list(user.get("plugins", [])) + args.plugin))
    return deep_merge(user, parse_overrides(args.overrides))


def cmd_distill(args) -> int:
    from .methods import check_names, resolve

    user = _user_config(args)
    load_plugins(user.get("plugins", []))
    for key in ("method", "dataset", "student"):
        if key not in user and not args.config:
            raise DatafreeError(f"distill needs --{key} (or --config FILE)")
    cfg = check_names(resolve(user))  # a bad key or value, or a name unknown here, fails before any file is written
    if args.print_config:  # answered without torch (datafree/catalog.py)
        print(config_yaml(cfg), end="")
        return 0
    from .engine import Engine
    from .executors import watch_parent

    watch_parent()  # a benchmark cell stops with its runner
    engine = Engine(cfg, resume=args.resume, overwrite=args.overwrite)
    record = engine.run()
    if sys.stdout.isatty():
        # the run's last progress line (stderr) said how it ended; stdout carries that line for scripts only
        return EXIT_DIVERGED if record.status == "diverged" else 0
    if record.status == "diverged":
        d = record.diverged or {}
        print(f"diverged at epoch {d.get('epoch')} step {d.get('step')} ({d.get('reason')})  -> {engine.out_dir}")
        return EXIT_DIVERGED
    if record.score("last") is not None:
        print(
            f"last {record.score_prefix}{record.score('last'):.2f}  "
            f"best {record.score('best'):.2f}"
            + ("  (collapsed to chance)" if record.status == "collapsed" else "")
            + f"  -> {engine.out_dir}"
        )
    return 0


def _plugins_and_overrides(args) -> dict:
    """Import the ``--plugin`` modules and return the command's ``key=value`` overrides (plus ``--data-root``)."""
    load_plugins(args.plugin)
    overrides = parse_overrides(args.overrides)
    if args.data_root:
        overrides["data_root"] = args.data_root
    return overrides


def cmd_train_teacher(args) -> int:
    from .train import recipe_of, train_teacher

    overrides = _plugins_and_overrides(args)
    entry = train_teacher(args.dataset, args.model, overrides, zoo=args.zoo, force=args.force, recipe=args.recipe)
    print(f"{args.dataset} {args.model} (recipe {recipe_of(entry)}): {entry.get('accuracy')}%")
    return 0


def cmd_table(args) -> int:
    from .report import describe_skipped, write_tables
    from .runs import load_runs

    if not os.path.isdir(args.dir):
        raise DatafreeError(f"{args.dir} is not a directory of runs")
    if args.index:
        from .report import write_index

        print(write_index(args.dir))
        return 0
    # every record (summaries and metrics files) is read here, before any output is written
    df = load_runs(args.dir)
    skipped = df.attrs.get("skipped", [])
    if len(df) == 0:
        raise DatafreeError(
            f"no readable runs (summary.json files) under {args.dir}"
            + (f": {describe_skipped(skipped)}" if skipped else "")
        )
    metric = "best_acc" if args.metric == "best" else "last_acc"
    title = args.title or f"Results: {os.path.basename(os.path.abspath(args.dir))}"
    out = args.out or os.path.join(args.dir, "README.md")
    if out == "-":
        from .report import load_reference, tables_markdown

        print(tables_markdown(df, title=title, reference=load_reference(args.reference), metric=metric))
        return 0
    # the tables go to the file (`--out -` prints them instead): here only where they went
    write_tables(
        df,
        os.path.dirname(os.path.abspath(out)),
        title=title,
        reference=args.reference,
        metric=metric,
        readme=out,
        note=args.note or "",
    )
    print(f"wrote {out} (+ accuracy.csv, stability.csv, curves.png, acc_vs_hours.png beside it)")
    if skipped:
        print(f'{describe_skipped(skipped)}; all are listed under "Skipped records" in {out}', file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    from .runner import run_suite

    extra = _plugins_and_overrides(args)
    if args.plugin:
        extra["plugins"] = args.plugin
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    res = run_suite(
        args.suite,
        seeds=seeds,
        only=args.only,
        dry_run=args.dry_run,
        executor=args.executor,
        out=args.out,
        extra=extra,
        gpus=args.gpus,
        jobs=args.jobs,
        partition=args.partition,
        timeout_min=args.time,
        gpus_per_job=args.gpus_per_job,
    )
    if res.get("signal"):  # stopped by SIGTERM or Ctrl-C: every running cell stopped and saved, resumable
        return 128 + int(res["signal"])
    return 1 if res.get("failed") else 0


def cmd_plot(args) -> int:
    from .report import describe_skipped, plot_acc_vs_hours, plot_curves
    from .runs import load_runs

    df = load_runs(args.dir) if os.path.isdir(args.dir) else None
    skipped = df.attrs.get("skipped", []) if df is not None else []
    if df is None or len(df) == 0:
        raise DatafreeError(
            f"no readable runs under {args.dir}" + (f": {describe_skipped(skipped)}" if skipped else "")
        )
    out = args.out or os.path.join(args.dir, "curves.png")
    plot_curves(df, out)  # the curves load_runs read: a bad metrics.jsonl is in skipped, not plotted
    hours = os.path.join(os.path.dirname(out), "acc_vs_hours.png")
    plot_acc_vs_hours(df, hours)
    print(f"wrote {out} and {hours}")
    if skipped:
        print(describe_skipped(skipped, limit=len(skipped)), file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(
        suite=args.suite,
        out=args.out,
        fresh=args.fresh,
        data_root=args.data_root,
        plugins=args.plugin,
        presets=args.presets,
        write_costs=args.write_costs,
    )
    return 0


def cmd_perf(args) -> int:
    from .perf import perf_table, run_perf
    from .results import atomic_write_text, machine

    methods = [m for m in args.methods.split(",") if m]
    scales = [s for s in args.scales.split(",") if s]
    from .perf import SCALES

    for s in scales:
        if s not in SCALES:
            raise UnknownNameError("scale", s, list(SCALES))
    os.makedirs(args.out, exist_ok=True)
    records = run_perf(
        methods,
        scales,
        args.repeats,
        args.warmup,
        args.max_iters,
        args.device,
        out_json=os.path.join(args.out, "perf.json"),
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    text = (
        f"# datafree perf\n\nMeasured on {machine()} with `datafree perf --repeats {args.repeats} --warmup "
        f"{args.warmup} --max-iters {args.max_iters}`: medians [min-max] over the repeats, untrained models, "
        "synthetic tensors.\n\n" + perf_table(records) + "\n"
    )
    atomic_write_text(os.path.join(args.out, "perf.md"), text)
    print(text)
    return 1 if any("error" in r for r in records) else 0


def cmd_data(args) -> int:
    from .data import default_root, get_source

    src = get_source(args.name)
    if args.action == "download":
        root = default_root(args.data_root)
        src.download(root)
        print(f"{args.name} downloaded to {root}")
    else:
        for split in ("train", "test"):
            s = src.load(split, args.data_root)
            print(f"{args.name} {split}: {len(s)} images {tuple(s.images.shape[1:])}")
    return 0


def cmd_export(args) -> int:
    from .export import export_run

    load_plugins(args.plugin)
    m = export_run(
        args.run_dir,
        args.out,
        overwrite=args.overwrite,
        device=args.device,
        teacher=args.teacher,
        zoo=args.zoo,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    classes = " ".join(f"{c}:{n}" for c, n in m["per_class"].items())
    print(f"exported {m['images']} images ({m['method']} on {m['dataset']}; per teacher class {classes}) -> {args.out}")
    return 0


COMMANDS = {
    "list": cmd_list,
    "distill": cmd_distill,
    "train-teacher": cmd_train_teacher,
    "table": cmd_table,
    "plot": cmd_plot,
    "demo": cmd_demo,
    "data": cmd_data,
    "bench": cmd_bench,
    "perf": cmd_perf,
    "inspect": cmd_inspect,
    "export": cmd_export,
}


def os_error_message(e: OSError) -> str:
    import errno

    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    text = f"{e.strerror or e}{where}"
    if e.errno == errno.ENOSPC:
        return (
            f"{text}: the disk is full. Free some space; a run continues from its last checkpoint with "
            "--resume (records are written atomically, so none was left half-written)"
        )
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{text}: no permission to write there. Choose another folder with --out (or fix its permissions)"
    return text


def stop_once_on_sigterm() -> None:
    """SIGTERM stops a command as Ctrl-C does (KeyboardInterrupt), so that a run saves its attempt and releases
    its folder on the way out; a second SIGTERM during that cleanup is ignored. Only in the main thread."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, _frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def one_line_warnings() -> None:
    """A warning is one ``warning:`` line, as an error is one ``error:`` line: Python's default echoes the
    source line that raised it, which says nothing to a user of the command."""
    import warnings

    def one_line(message, category, filename, lineno, line=None) -> str:
        name = category.__name__
        return f"warning: {message}\n" if name == "UserWarning" else f"warning ({name}): {message}\n"

    warnings.formatwarning = one_line  # the format only: where warnings go (a test's record of them) is kept


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    # key=value overrides may come before or after options: collect the ones argparse leaves over
    args, extra = parser.parse_known_args(argv)
    leftover = [e for e in extra if "=" not in e or e.startswith("-")]
    if leftover or (extra and not hasattr(args, "overrides")):
        parser.error("unrecognized arguments: " + " ".join(leftover or extra))
    if extra:
        args.overrides = list(args.overrides) + extra
    stop_once_on_sigterm()
    one_line_warnings()
    try:
        return COMMANDS[args.command](args)
    except DatafreeError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # a full disk, a read-only folder, a missing file: the user's to fix, no traceback
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted; a run continues from its last checkpoint with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
