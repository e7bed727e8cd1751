#!/usr/bin/env bash
# Build kvfs and mount a store: data in ${KVFS_DATA:-$HOME/.local/share/kvfs}, mounted at ${KVFS_MNT:-$HOME/kvfs}.
# Unmount with: fusermount3 -u "$KVFS_MNT"
set -eu
cd "$(dirname "$0")/.."
bash scripts/deps.sh
make -j"$(nproc 2>/dev/null || echo 2)" all >/dev/null
data=${KVFS_DATA:-$HOME/.local/share/kvfs}
mnt=${KVFS_MNT:-$HOME/kvfs}
mkdir -p "$mnt" "$(dirname "$data")" # kvfs mount makes DATADIR (mode 0700), not its parent: ~/.local/share may be missing
./build/kvfs mount "$data" "$mnt"
echo "kvfs: store $data mounted at $mnt (unmount: fusermount3 -u $mnt)"
