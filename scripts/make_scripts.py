#!/usr/bin/env python3
"""Write scripts/: one script per suite, and one per method and pair of the CIFAR tables.

The per-pair scripts follow the reference repositories' naming
(scripts/<method>/<method>_<dataset>_<teacher>_<student>.sh) and run that one cell of the
suite, so their results land in the suite's folder and tables. Re-run after adding a suite
or a method:  python scripts/make_scripts.py
"""

import os
import stat

from datafree.runner import expand, load_suite

HERE = os.path.dirname(os.path.abspath(__file__))
SUITES = [
    "demo",
    "mnist",
    "mnist_2core",
    "mnist_bn",
    "cifar10",
    "cifar100",
    "cudfkd_stability",
    "fast_speed",
    "hidfd_rho",
]
CIFAR = ["cifar10", "cifar100"]


def write(path: str, lines) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(["#!/usr/bin/env bash", *lines, ""]))
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def main() -> None:
    for name in SUITES:
        s = load_suite(name)
        write(
            os.path.join(HERE, f"bench_{name}.sh"),
            [
                f"# The {name} suite ({len(expand(s))} cells): runs what is not finished yet,"
                f" then writes {s.out}/README.md.",
                "# Extra arguments go to `datafree bench` (--dry-run, --only PATTERN, --seeds 0,1,2, --executor slurm,"
                " ...).",
                "set -euo pipefail",
                'cd "$(dirname "$0")/.."',
                f'datafree bench {name} "$@"',
            ],
        )
    for name in CIFAR:
        s = load_suite(name)
        for cell in expand(s):
            fname = f"{cell.entry}_{cell.dataset}_{cell.teacher}_{cell.student}.sh"
            write(
                os.path.join(HERE, cell.entry, fname),
                [
                    f"# {cell.entry} on {cell.dataset}, {cell.teacher} -> {cell.student}: one cell of the {name}"
                    " suite,",
                    f"# with the method's settings for this pair (datafree/configs/methods/{cell.method}.yaml).",
                    "# Extra arguments go to `datafree bench` (e.g. --seeds 0,1,2, or key=value overrides).",
                    "set -euo pipefail",
                    'cd "$(dirname "$0")/../.."',
                    f"datafree bench {name} --only '{cell.dataset}/{cell.entry}/{cell.teacher}-{cell.student}/*'"
                    ' "$@"',
                ],
            )


if __name__ == "__main__":
    main()
