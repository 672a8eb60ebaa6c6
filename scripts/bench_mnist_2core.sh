#!/usr/bin/env bash
# The mnist_2core suite (2 cells): runs what is not finished yet, then writes results/mnist_2core/README.md.
# Extra arguments go to `datafree bench` (--dry-run, --only PATTERN, --seeds 0,1,2, --executor slurm, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
datafree bench mnist_2core "$@"
