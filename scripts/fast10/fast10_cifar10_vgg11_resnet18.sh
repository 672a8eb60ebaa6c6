#!/usr/bin/env bash
# fast10 on cifar10, vgg11 -> resnet18: one cell of the cifar10 suite,
# with the method's settings for this pair (datafree/configs/methods/fast10.yaml).
# Extra arguments go to `datafree bench` (e.g. --seeds 0,1,2, or key=value overrides).
set -euo pipefail
cd "$(dirname "$0")/../.."
datafree bench cifar10 --only 'cifar10/fast10/vgg11-resnet18/*' "$@"
