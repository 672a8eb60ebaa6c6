#!/usr/bin/env bash
# collected_kd on cifar100, vgg11 -> resnet18: one cell of the cifar100 suite,
# with the method's settings for this pair (datafree/configs/methods/collected_kd.yaml).
# Extra arguments go to `datafree bench` (e.g. --seeds 0,1,2, or key=value overrides).
set -euo pipefail
cd "$(dirname "$0")/../.."
datafree bench cifar100 --only 'cifar100/collected_kd/vgg11-resnet18/*' "$@"
