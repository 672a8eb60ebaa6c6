#!/usr/bin/env bash
# The mnist_bn suite (19 cells): runs what is not finished yet, then writes results/mnist_bn/README.md.
# Extra arguments go to `datafree bench` (--dry-run, --only PATTERN, --seeds 0,1,2, --executor slurm, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
datafree bench mnist_bn "$@"
