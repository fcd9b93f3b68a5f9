#!/usr/bin/env bash
# A launch that cannot run (--dataset metfaces without its data), an older checkout and this one in turn, each
# in a fresh empty folder: the seconds to its exit, its exit code and what it left behind.
#
#     git worktree add /tmp/old 88a2d0d && benchmarks/failing_launch.sh /tmp/old [ROUNDS]
set -u
HERE=$(cd "$(dirname "$0")/.." && pwd)
OLD=$(cd "$1" && pwd)
PY=$HERE/.venv/bin/python
for round in $(seq "${2:-3}"); do
  for code in "$OLD" "$HERE"; do
    dir=$(mktemp -d)
    start=$(date +%s.%N)
    (cd "$dir" && FPA_DATA_ROOT=$dir/data "$PY" "$code/sweeps/launch.py" --dataset metfaces >/dev/null 2>&1)
    rc=$?
    end=$(date +%s.%N)
    left=$(ls -A "$dir" | tr '\n' ' ')
    printf '%s round %s: %.2f s, exit %s, left: %s\n' "$code" "$round" "$(echo "$end - $start" | bc)" "$rc" "${left:-nothing}"
    rm -rf "$dir"
  done
done
