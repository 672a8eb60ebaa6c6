#!/usr/bin/env bash
# The cudfkd_stability suite (42 cells): runs what is not finished yet, then writes results/cudfkd_stability/README.md.
# Extra arguments go to `datafree bench` (--dry-run, --only PATTERN, --seeds 0,1,2, --executor slurm, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
datafree bench cudfkd_stability "$@"
