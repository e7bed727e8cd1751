#!/usr/bin/env bash
# Build everything (normal, ASan+UBSan and the TSan test programs) and run the whole test suite. Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
bash scripts/deps.sh || exit 1
jobs=$(nproc 2>/dev/null || echo 2)
if ! make -j"$jobs" all >/tmp/kvfs-build.log 2>&1 || ! make -j"$jobs" SAN=1 all >>/tmp/kvfs-build.log 2>&1 ||
    ! make -j"$jobs" tsan >>/tmp/kvfs-build.log 2>&1; then
    cat /tmp/kvfs-build.log
    echo "0 passed, 1 failed"
    exit 1
fi
exec bash tests/run.sh
