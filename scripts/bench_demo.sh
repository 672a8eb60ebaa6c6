#!/usr/bin/env bash
# The demo suite (26 cells): runs what is not finished yet, then writes results/demo/README.md.
# Extra arguments go to `datafree bench` (--dry-run, --only PATTERN, --seeds 0,1,2, --executor slurm, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
datafree bench demo "$@"
