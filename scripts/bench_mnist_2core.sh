#!/usr/bin/env bash
# The mnist_2core suite (benchmarks/suites/mnist_2core.yaml): runs what is not finished yet, then writes its
# tables. Extra arguments go to `datafree bench` (--dry-run, --only PATTERN, --seeds 0,1,2, --jobs 2,
# --executor slurm, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
datafree bench mnist_2core "$@"
