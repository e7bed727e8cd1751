#!/usr/bin/env bats
# fs_posix.bats — a differential test of POSIX semantics against the local filesystem, in the spirit of pjdfstest.
# tests/bats/posix_diff.py runs the same system calls, as root and as two unprivileged users (uids 4321 and 4322, by
# setresuid in forked children), in a directory of the local filesystem and in the mount: open flags, chmod and
# chown rules, set-user-ID and set-group-ID clearing and inheritance, sticky directories, utimensat permissions,
# rename rules (also RENAME_NOREPLACE and RENAME_EXCHANGE), mkdir and rmdir, link, name and path lengths, access(2),
# readdir's d_type; for each step it compares the result (or errno), mode, owner, link count, size and which of
# atime, mtime and ctime changed. Then it remounts and checks that the mount shows what it showed before (the
# caches showed what the store keeps). Differences docs/mapping.md documents are listed as "documented" (see
# documented() in the probe); any other fails the test.

load helpers.bash-fs

setup() {
    fs_setup
    [ "$(id -u)" = 0 ] || skip "needs root: the probe runs steps as other users"
    command -v python3 >/dev/null || skip "python3 is not installed"
    chmod 0755 "$T"
    mkdir -m 0755 "$T/ref"
    export T D M KVFS
}

teardown() {
    fs_teardown
}

# Mount with allow_other (other users may not use the mount otherwise) and the given options, run the probe.
probe() {
    fs_mount -o allow_other "$@"
    chmod 0777 "$M"
    local wb=()
    [[ "$*" == *no_writeback_cache* ]] && wb=(--no-writeback-cache)
    run t python3 "$BATS_TEST_DIRNAME/posix_diff.py" "$T/ref" "$M" "${wb[@]}" \
        --remount ". '$BATS_TEST_DIRNAME/helpers.bash-fs' && fs_remount -o allow_other $*"
    echo "$output" | grep -v '^documented' || true
    [ "$status" -eq 0 ]
}

@test "posix: system calls give the results, attributes and times of a local filesystem (writeback cache)" {
    probe
}

@test "posix: the same without the writeback cache" {
    probe -o no_writeback_cache
}
