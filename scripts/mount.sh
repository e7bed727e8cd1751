#!/usr/bin/env bash
# Build kvfs and mount a store: data in ${KVFS_DATA:-$HOME/.local/share/kvfs}, mounted at ${KVFS_MNT:-$HOME/kvfs}.
# Unmount with: fusermount3 -u "$KVFS_MNT"
set -eu
cd "$(dirname "$0")/.."
bash scripts/deps.sh
make -j"$(nproc 2>/dev/null || echo 2)" all >/dev/null
data=${KVFS_DATA:-$HOME/.local/share/kvfs}
mnt=${KVFS_MNT:-$HOME/kvfs}
mkdir -p "$mnt"
./build/kvfs mount "$data" "$mnt"
echo "kvfs: store $data mounted at $mnt (unmount: fusermount3 -u $mnt)"
