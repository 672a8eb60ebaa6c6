#!/usr/bin/env python3
"""Write scripts/bench_<suite>.sh, one per suite file in benchmarks/suites/ (re-run after adding a suite).

A method's cells need no script of their own: scripts/cell.sh SUITE METHOD [PAIR] runs them, whatever methods
a suite holds (a method joins the suites its entry lists, so adding one changes no script).
"""

import glob
import os
import stat

HERE = os.path.dirname(os.path.abspath(__file__))
SUITES = os.path.join(os.path.dirname(HERE), "benchmarks", "suites")


def write(path: str, lines) -> None:
    with open(path, "w") as f:
        f.write("\n".join(["#!/usr/bin/env bash", *lines, ""]))
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def main() -> None:
    for path in sorted(glob.glob(os.path.join(SUITES, "*.yaml"))):
        name = os.path.splitext(os.path.basename(path))[0]
        write(
            os.path.join(HERE, f"bench_{name}.sh"),
            [
                f"# The {name} suite (benchmarks/suites/{name}.yaml): runs what is not finished yet, then writes its",
                "# tables. Extra arguments go to `datafree bench` (--dry-run, --only PATTERN, --seeds 0,1,2, --jobs 2,",
                "# --executor slurm, ...).",
                "set -euo pipefail",
                'cd "$(dirname "$0")/.."',
                f'datafree bench {name} "$@"',
            ],
        )


if __name__ == "__main__":
    main()
