#!/usr/bin/env bash
# The hidfd_rho suite (benchmarks/suites/hidfd_rho.yaml): runs what is not finished yet, then writes its
# tables. Extra arguments go to `datafree bench` (--dry-run, --only PATTERN, --seeds 0,1,2, --jobs 2,
# --executor slurm, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
datafree bench hidfd_rho "$@"
