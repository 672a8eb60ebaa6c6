#!/usr/bin/env bash
# kd_folder_cmi_set on cifar10, wrn40_2 -> wrn16_1: one cell of the cifar10 suite,
# with the method's settings for this pair (datafree/configs/methods/kd_folder.yaml).
# Extra arguments go to `datafree bench` (e.g. --seeds 0,1,2, or key=value overrides).
set -euo pipefail
cd "$(dirname "$0")/../.."
datafree bench cifar10 --only 'cifar10/kd_folder_cmi_set/wrn40_2-wrn16_1/*' "$@"
