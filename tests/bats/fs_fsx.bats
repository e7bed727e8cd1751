#!/usr/bin/env bats
# fs_fsx.bats — fsx-style randomized file-data tests: tests/bats/fsx.py does random writes (small and large, past
# the end, appends), reads, truncations, fallocate, fsync, mmap reads and msync'ed writes, several descriptors per
# file, renames over open files and unlinks of open files, on the mount and on a reference copy in $T/ref, and
# compares sizes and contents as it goes; some runs remount, or kill -9 the daemon after fsync, on the way.
#
# The seed is fixed (printed); KVFS_FSX_SEED and KVFS_FSX_OPS change the seed and the number of operations. A failure
# prints the seed, the operation number and the last operations, and how to run it again.

load helpers.bash-fs

setup() {
    fs_setup
}

teardown() {
    fs_teardown
}

FSX_SEED="${KVFS_FSX_SEED:-20250611}"

# fsx_run LABEL OPS MOUNT_OPTIONS [fsx.py options...]: mount with the options, run fsx, then unmount, mount again and
# compare every file with the reference once more.
fsx_run() {
    local label="$1" ops="${KVFS_FSX_OPS:-$2}"
    export FSX_MOUNT_OPTS="$3" T D M KVFS BATS_TEST_DIRNAME
    shift 3
    # shellcheck disable=SC2086
    fs_mount $FSX_MOUNT_OPTS
    local h='. "$BATS_TEST_DIRNAME/helpers.bash-fs"'
    run timeout -k 5 600 python3 "$BATS_TEST_DIRNAME/fsx.py" "$M" "$T/ref" --seed "$FSX_SEED" --ops "$ops" \
        --label "$label" --remount-cmd "bash -c '$h && fs_remount \$FSX_MOUNT_OPTS'" \
        --crash-cmd "bash -c '$h && fs_crash && fs_mount \$FSX_MOUNT_OPTS'" "$@"
    echo "$output"
    [ "$status" -eq 0 ]
    # shellcheck disable=SC2086
    fs_remount $FSX_MOUNT_OPTS
    diff -r "$T/ref" "$M"
}

@test "fsx: default mount, with remounts and kill -9 after fsync" {
    fsx_run "fsx: default mount" 250 "" --remount-p 0.01 --crash-p 0.01
}

@test "fsx: -o sync" {
    fsx_run "fsx: -o sync" 150 "-o sync" --remount-p 0.01 --crash-p 0.01
}

@test "fsx: no writeback cache (the daemon's write buffer), tiny memtable and block cache" {
    fsx_run "fsx: no writeback cache" 200 "-o no_writeback_cache,cache_timeout=0,memtable_size=64K,cache_size=256K" \
        --remount-p 0.01 --crash-p 0.01
}

@test "fsx: small files around a large blob threshold (contents move between the tree and blob files)" {
    fsx_run "fsx: small files" 250 "-o blob_threshold=64K" --max-size $((512 << 10)) --max-write $((200 << 10)) \
        --remount-p 0.01 --crash-p 0.01
}

@test "fsx: two exercisers at once, each in its own directory of one mount" {
    fs_mount
    local ops="${KVFS_FSX_OPS:-150}"
    timeout -k 5 600 python3 "$BATS_TEST_DIRNAME/fsx.py" "$M" "$T/ref" --dir one --seed "$FSX_SEED" --ops "$ops" \
        --label "fsx: two exercisers at once" >"$T/one.out" 2>&1 &
    local one=$!
    timeout -k 5 600 python3 "$BATS_TEST_DIRNAME/fsx.py" "$M" "$T/ref" --dir two --seed "$((FSX_SEED + 1))" \
        --ops "$ops" --label "fsx: two exercisers at once" >"$T/two.out" 2>&1 &
    local two=$! st=0
    wait "$one" || st=1
    wait "$two" || st=1
    cat "$T/one.out" "$T/two.out"
    [ "$st" -eq 0 ]
    fs_remount
    diff -r "$T/ref" "$M"
}
