#!/usr/bin/env bash
# One method's cells of a suite, as the reference repositories' per-pair scripts ran one cell:
#   scripts/cell.sh cifar10 cmi wrn40_2-wrn16_1      # CMI on wrn40_2 -> wrn16_1 of the cifar10 suite
#   scripts/cell.sh cifar100 fast10                  # every pair of Fast-10 in the cifar100 suite
#   scripts/cell.sh cifar10 dafl '*' --seeds 0,1,2   # extra arguments go to `datafree bench`
# METHOD and PAIR are `datafree bench --only` patterns (a preset is written method:preset); the results land in the
# suite's folder and tables.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: scripts/cell.sh SUITE METHOD [PAIR] [bench arguments]" >&2
  exit 2
fi
suite=$1 method=$2 pair=${3:-*}
shift $(( $# < 3 ? $# : 3 ))
datafree bench "$suite" --only "*/$method/$pair/*" "$@"
