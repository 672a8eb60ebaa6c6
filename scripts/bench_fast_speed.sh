#!/usr/bin/env bash
# The fast_speed suite (benchmarks/suites/fast_speed.yaml): runs what is not finished yet, then writes its
# tables. Extra arguments go to `datafree bench` (--dry-run, --only PATTERN, --seeds 0,1,2, --jobs 2,
# --executor slurm, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
datafree bench fast_speed "$@"
