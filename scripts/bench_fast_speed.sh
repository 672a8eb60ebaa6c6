#!/usr/bin/env bash
# The fast_speed suite (50 cells): runs what is not finished yet, then writes results/fast_speed/README.md.
# Extra arguments go to `datafree bench` (--dry-run, --only PATTERN, --seeds 0,1,2, --executor slurm, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
datafree bench fast_speed "$@"
