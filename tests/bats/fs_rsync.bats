#!/usr/bin/env bats
# fs_rsync.bats — rsync -aX a tree with symlinks, modes, times and xattrs into the mount and back out, compare byte
# for byte and attribute for attribute; a second rsync transfers nothing; after changing 1% of the files only those
# are transferred.

load helpers.bash-fs

setup() {
    fs_setup
    command -v rsync >/dev/null || skip "rsync is not installed"
    fs_mount
    mkdir -p "$T/src"
    local d f
    for d in $(seq 1 10); do
        mkdir -p "$T/src/dir$d/sub"
        for f in $(seq 1 20); do
            head -c $((RANDOM * 3 + f)) /dev/urandom > "$T/src/dir$d/file$f"
        done
        echo "in sub $d" > "$T/src/dir$d/sub/note"
        ln -s "file1" "$T/src/dir$d/link"
        # rsync leaves a new symlink's time alone when it falls in the same second as the source's (on any file
        # system): give the links an old time so that the comparison below is exact
        touch -h -d "2003-0$((d % 9 + 1))-01 12:00:00.5" "$T/src/dir$d/link"
        chmod 0600 "$T/src/dir$d/file2"
        chmod 0755 "$T/src/dir$d/file3"
    done
    mkdir "$T/src/empty"
    head -c 3000000 /dev/urandom > "$T/src/large"
    if command -v setfattr >/dev/null; then
        setfattr -n user.tag -v hello "$T/src/dir1/file1"
        setfattr -n user.dirtag -v d "$T/src/dir2"
    fi
    touch -d '2005-06-07 08:09:10.123456789' "$T/src/dir3/file4"
}

teardown() {
    fs_teardown
}

# Names of the files rsync transferred (itemized changes with content or creation).
transferred() {
    grep -E '^[<>]f' | awk '{print $2}'
}

@test "rsync -aX in and out, byte for byte and attribute for attribute" {
    t rsync -aX "$T/src/" "$M/dst/"
    diff -r "$T/src" "$M/dst"
    diff <(tree_attrs "$T/src") <(tree_attrs "$M/dst")
    diff <(tree_attrs_with_times "$T/src") <(tree_attrs_with_times "$M/dst")
    if command -v getfattr >/dev/null; then
        [ "$(getfattr --only-values -n user.tag "$M/dst/dir1/file1")" = hello ]
        [ "$(getfattr --only-values -n user.dirtag "$M/dst/dir2")" = d ]
    fi
    t rsync -aX "$M/dst/" "$T/back/"
    diff -r "$T/src" "$T/back"
    [ "$(tree_attrs_with_times "$T/src")" = "$(tree_attrs_with_times "$T/back")" ]
    # and after a remount
    fs_remount
    [ "$(tree_attrs_with_times "$T/src")" = "$(tree_attrs_with_times "$M/dst")" ]
}

@test "a second rsync transfers nothing; after changing 1% only those files go" {
    t rsync -aX "$T/src/" "$M/dst/"
    run t rsync -aXi "$T/src/" "$M/dst/"
    [ "$status" -eq 0 ]
    [ -z "$(echo "$output" | transferred)" ] || { echo "$output"; false; }
    echo changed >> "$T/src/dir4/file5"
    echo changed >> "$T/src/dir7/file9"
    run t rsync -aXi "$T/src/" "$M/dst/"
    [ "$(echo "$output" | transferred | sort | tr '\n' ' ')" = "dir4/file5 dir7/file9 " ] || { echo "$output"; false; }
    fs_remount
    run t rsync -aXi "$T/src/" "$M/dst/"
    [ -z "$(echo "$output" | transferred)" ] || { echo "$output"; false; }
}
