#!/usr/bin/env bash
# Install the Debian packages kvfs needs to build, test and benchmark (when run as root and something is missing).
set -eu
pkgs="build-essential pkg-config libfuse3-dev fuse3 libxxhash-dev zlib1g-dev bats rsync attr libleveldb-dev librocksdb-dev"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "kvfs: missing packages:$missing (install them as root: apt-get install$missing)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq $missing
