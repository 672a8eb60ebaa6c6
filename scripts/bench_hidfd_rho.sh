#!/usr/bin/env bash
# The hidfd_rho suite (8 cells): runs what is not finished yet, then writes results/hidfd_rho/README.md.
# Extra arguments go to `datafree bench` (--dry-run, --only PATTERN, --seeds 0,1,2, --executor slurm, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
datafree bench hidfd_rho "$@"
