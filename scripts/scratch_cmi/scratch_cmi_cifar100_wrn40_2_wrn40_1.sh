#!/usr/bin/env bash
# scratch_cmi on cifar100, wrn40_2 -> wrn40_1: one cell of the cifar100 suite,
# with the method's settings for this pair (datafree/configs/methods/scratch_cmi.yaml).
# Extra arguments go to `datafree bench` (e.g. --seeds 0,1,2, or key=value overrides).
set -euo pipefail
cd "$(dirname "$0")/../.."
datafree bench cifar100 --only 'cifar100/scratch_cmi/wrn40_2-wrn40_1/*' "$@"
