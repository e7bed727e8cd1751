#!/usr/bin/env bats
# fs_model.bats — a randomized model test of the namespace and the metadata: random operations on the mount and on
# a reference directory of the local filesystem must give the same results and leave the same trees (names, types,
# modes, owners, sizes, contents, times set explicitly, symlink targets, user.* xattrs; errno of every failure),
# across remounts and with keys put through the control socket. The driver is tests/bats/fsmodel.py; the known,
# documented differences it excludes are marked "KNOWN" there.
#
# KVFS_MODEL_SEED and KVFS_MODEL_OPS vary the run (the seed is printed; a failure prints the seed, the operation
# number and the last operations).

load helpers.bash-fs

setup() {
    fs_setup
    command -v python3 >/dev/null || skip "python3 is not installed"
    fs_mount
    mkdir "$T/ref"
    export T D M KVFS
}

teardown() {
    fs_teardown
}

@test "model: random namespace operations match a local filesystem" {
    run python3 "$BATS_TEST_DIRNAME/fsmodel.py" "$M" "$T/ref" "$D" "$KVFS" "$BATS_TEST_DIRNAME/helpers.bash-fs"
    echo "$output"
    [ "$status" -eq 0 ]
}
