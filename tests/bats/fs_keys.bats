#!/usr/bin/env bats
# fs_keys.bats — the key view and the file view agree: keys put with `kvfs put` are files, files written through
# the mount read back with `kvfs get`, odd keys appear under escaped names that round-trip, a key that is both a
# file and a directory shows both, and listings skip subtrees.

load helpers.bash-fs

setup() {
    fs_setup
}

teardown() {
    fs_teardown
}

@test "a key put with kvfs put is a file; a file written through the mount is a key" {
    kv put "$D" users/alice/email alice@example.org
    fs_mount
    [ "$(cat "$M/users/alice/email")" = alice@example.org ]
    [ "$(stat -c %a "$M/users/alice/email")" = 644 ]
    [ "$(stat -c %a "$M/users")" = 755 ]
    echo -n "from the mount" > "$M/users/bob"
    # through the control socket while mounted
    run kv get "$D" users/bob
    [ "$output" = "from the mount" ]
    fs_unmount
    run kv get "$D" users/bob
    [ "$output" = "from the mount" ]
    # attributes are not in the values: the store shows exactly path -> content
    run kv scan "$D"
    [ "${#lines[@]}" -eq 2 ]
}

@test "odd keys appear under escaped names that round-trip" {
    kv put "$D" 'a//b' 1
    kv put "$D" '/lead' 2
    kv put "$D" 'p/..' 3
    # (kvfs put reads keys in text form: %XX is a byte)
    kv put "$D" '100%25' 4
    kv put "$D" 'x%2541' 5
    kv put "$D" 'nul%00byte' 6
    kv put "$D" "$(printf 'L%.0s' $(seq 1 300))" 7
    fs_mount
    [ "$(cat "$M/a/%/b")" = 1 ]
    [ "$(cat "$M/%/lead")" = 2 ]
    [ "$(cat "$M/p/%2E%2E")" = 3 ]
    [ "$(cat "$M/100%")" = 4 ]
    [ "$(cat "$M/x%41")" = 5 ]   # a '%' that starts no escape is itself
    [ "$(cat "$M/nul%00byte")" = 6 ]
    run find "$M" -type f
    [ "${#lines[@]}" -eq 7 ]
    long=$(find "$M" -type f -path '*%+*')
    [ "$(cat "$long")" = 7 ]
    # copy the tree out and back in through the mount: the same keys come back
    cp -a "$M/." "$T/copy"
    fs_unmount
    rm -rf "$D"
    fs_mount
    cp -a "$T/copy/." "$M/"
    fs_unmount
    run kv get "$D" 'nul%00byte'
    [ "$output" = 6 ]
    run kv get "$D" 'a//b'
    [ "$output" = 1 ]
    run kv get "$D" "$(printf 'L%.0s' $(seq 1 300))"
    [ "$output" = 7 ]
}

@test "names with a % from the wild (my%20file, a%2Fb, 100%) are files of their own names; %00 %25 %2E %+ stay escapes" {
    fs_mount
    mkdir -p "$T/src/dl%20dir"
    for n in 'my%20file.txt' 'Docs%2Fnotes' '100%' '%41' 'x%FFy' '%e2%82%ac' 'a%2' '%Fz' '50%+off'; do
        printf '%s' "$n" > "$T/src/$n"
        printf '%s' "in $n" > "$T/src/dl%20dir/$n"
    done
    # rsync of such a tree into the mount (it failed with EINVAL for all but 100% and a%2), and back out
    rsync -a "$T/src/" "$M/"
    rsync -a "$M/" "$T/back/"
    diff -r "$T/src" "$T/back"
    [ "$(cat "$M/my%20file.txt")" = 'my%20file.txt' ]
    run ls "$M/dl%20dir"
    [ "${#lines[@]}" -eq 9 ]
    # the key is the name's bytes
    fs_unmount
    run kv get "$D" 'my%2520file.txt'
    [ "$output" = 'my%20file.txt' ]
    run kv scan "$D" --keys-only
    [[ "$output" == *'Docs%252Fnotes'* ]]
    fs_mount
    # names the mapping keeps for its escapes are still refused (they would name other keys)
    for n in 'x%25' 'a%2Eb' '%25%25' 'ab%2E'; do
        run touch "$M/$n"
        [ "$status" -ne 0 ]
        [[ "$output" == *"Invalid argument"* ]]
    done
}

@test "names of libfuse's hidden form (.fuse_hidden + 16 hex digits) that a user gives are ordinary files" {
    # libfuse hides an open file that is unlinked under such a name, and the daemon took every rename to one for
    # that: rsync of a .fuse_hidden leftover of another mount (a rename of its temporary file) lost the file
    # silently, and so did a rename(2) of an open file to such a name
    fs_mount
    local h=.fuse_hidden0000000200000001 h2=.fuse_hidden0000000300000001
    mkdir -p "$T/src"
    echo leftover > "$T/src/$h"
    t rsync -a "$T/src/" "$M/r/"
    [ "$(cat "$M/r/$h")" = leftover ]
    run python3 - "$M" "$h2" <<'PY'
import os, sys
m, h2 = sys.argv[1], sys.argv[2]
with open(os.path.join(m, "f"), "w") as f:
    f.write("open while renamed\n")
    f.flush()
    os.rename(os.path.join(m, "f"), os.path.join(m, h2))
    assert os.path.exists(os.path.join(m, h2)), os.listdir(m)
PY
    [ "$status" -eq 0 ] || { echo "$output"; false; }
    [ "$(cat "$M/$h2")" = "open while renamed" ]
    fs_remount
    [ "$(cat "$M/r/$h")" = leftover ]
    [ "$(cat "$M/$h2")" = "open while renamed" ]
    rm "$M/r/$h" "$M/$h2"
    run ls -A "$M" "$M/r"
    [ "$output" = "$(printf '%s:\nr\n\n%s:' "$M" "$M/r")" ]
}

@test "a key that is both a file and a directory: both readable, rm -r works" {
    kv put "$D" a file-a
    kv put "$D" a/b file-ab
    fs_mount
    run ls "$M"
    [ "$output" = "$(printf 'a\na%%F')" ]
    [ "$(cat "$M/a%F")" = file-a ]
    [ "$(cat "$M/a/b")" = file-ab ]
    rm -r "$M/a"
    [ "$(cat "$M/a")" = file-a ]
    rm -r "$M/a"
    run ls -A "$M"
    [ "$output" = "" ]
}

@test "a file beside a directory of its key: moving the directory leaves the file, x%F is created only beside x" {
    fs_mount
    mkdir "$M/a"
    echo sub > "$M/a/b"
    echo fileA > "$M/a%F"
    exec 5>>"$M/a%F"
    mv "$M/a" "$M/z"
    echo appended >&5   # the open file is still a (not z%F)
    exec 5>&-
    run ls "$M"
    [ "$output" = "$(printf 'a\nz')" ]
    [ "$(cat "$M/a")" = "$(printf 'fileA\nappended')" ]
    [ "$(cat "$M/z/b")" = sub ]
    # without a directory x, "x%F" is not a name to create: x%F and x would be one file (tar would merge them)
    run touch "$M/x%F"
    [ "$status" -ne 0 ]
    [[ "$output" == *"Invalid argument"* ]]
    echo plain > "$M/x"
    run mv "$M/x" "$M/y%F"
    [ "$status" -ne 0 ]
    [ "$(cat "$M/x")" = plain ]
    # nor is it a name for a directory, beside a directory of that key or not (as mkdir of it)
    mkdir "$M/w" "$M/v"
    run python3 -c 'import os, sys; os.rename(sys.argv[1], sys.argv[2])' "$M/w" "$M/v%F"
    [[ "$output" == *"Invalid argument"* ]]
    run python3 -c 'import os, sys; os.rename(sys.argv[1], sys.argv[2])' "$M/w" "$M/u%F"
    [[ "$output" == *"Invalid argument"* ]]
    run mkdir "$M/v%F"
    [[ "$output" == *"Invalid argument"* ]]
    [ -d "$M/w" ]
    rmdir "$M/w" "$M/v"
    mkdir "$M/t" && echo "I am x%F" > "$T/x%F" && echo "I am x" > "$T/x"
    (cd "$T" && tar cf "$T/x.tar" 'x%F' x)
    run tar xf "$T/x.tar" -C "$M/t"
    [ "$status" -ne 0 ]
    [ "$(cat "$M/t/x")" = "I am x" ]
    # the file and the directory of one key cannot trade places
    rm "$M/x"
    mkdir "$M/x"
    echo in > "$M/x/i"
    echo plain > "$M/x%F"
    run python3 -c 'import ctypes, os, sys
os.chdir(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
r = libc.renameat2(-100, b"x%F", -100, b"x", 2)  # RENAME_EXCHANGE
sys.exit(0 if r != 0 and ctypes.get_errno() == 22 else 1)' "$M"
    [ "$status" -eq 0 ]
    [ "$(cat "$M/x%F")" = plain ]
    [ "$(cat "$M/x/i")" = in ]
    [ -d "$M/x" ]
}

@test "a directory that vanishes with its last key is gone for stat too" {
    kv put "$D" r/s/t deep
    kv put "$D" q/u/v deep
    fs_mount
    ls "$M/r/s" "$M/q/u" >/dev/null   # the kernel now caches r, r/s, q, q/u
    rm "$M/r/s/t"
    mv "$M/q/u/v" "$M/v"
    # the kernel learns it a moment later (not from the request itself: see fs_fuse.c); wait at most 5 s
    for i in $(seq 1 50); do [ -e "$M/r" ] || [ -e "$M/q" ] || break; sleep 0.1; done
    # (one test per line: bats does not fail on a false test that is not the last of an && list)
    [ ! -e "$M/r" ]
    [ ! -e "$M/r/s" ]
    [ ! -e "$M/q" ]
    [ ! -e "$M/q/u" ]
    run ls "$M"
    [ "$output" = v ]
    # an explicit directory stays
    mkdir -p "$M/e/f"
    echo x > "$M/e/f/g"
    rm "$M/e/f/g"
    [ -d "$M/e/f" ]
}

@test "a directory that vanishes with its last key changes the mtime of the directory that held it" {
    kv put "$D" top/r/s/t deep
    fs_mount
    touch -d '2001-01-01 00:00:00' "$M/top"   # now explicit, with an old mtime
    ls "$M/top/r/s" >/dev/null
    [ "$(stat -c %Y "$M/top")" -lt 1000000000 ]
    rm "$M/top/r/s/t"
    for i in $(seq 1 50); do [ -e "$M/top/r" ] || break; sleep 0.1; done
    [ ! -e "$M/top/r" ]
    # top lost its entry r: its mtime and ctime are now, through the kernel's cache and after a remount
    [ "$(stat -c %Y "$M/top")" -gt 1700000000 ]
    fs_unmount
    fs_mount
    [ "$(stat -c %Y "$M/top")" -gt 1700000000 ]
    [ "$(stat -c %Z "$M/top")" -gt 1700000000 ]
}

@test "setting an xattr on an implicit directory makes it explicit: its attributes never outlive it" {
    kv put "$D" a/b one
    fs_mount
    setfattr -n user.note -v kept "$M/a"
    rm "$M/a/b"
    # it stays, with its attribute, as a directory chmod'ed or made by mkdir would (it used to vanish, and the
    # attribute came back on the next directory of that name)
    [ -d "$M/a" ]
    [ "$(getfattr --only-values -n user.note "$M/a")" = kept ]
    rmdir "$M/a"
    kv put "$D" a/c two
    run getfattr --only-values -n user.note "$M/a"
    [ "$status" -ne 0 ]
    [[ "$output" == *"No such attribute"* ]]
}

@test "a file whose key is as long as a key can be is created, listed, read and removed" {
    fs_mount
    run python3 - "$M" <<'PY'
import errno, os, sys
os.chdir(sys.argv[1])
n = "d" * 250
for i in range(261):
    os.mkdir(n)
    os.chdir(n)
name = "f" * 24                       # key length 261 * 251 + 24 = 65535: its attribute record, 65536
with open(name, "w") as f:
    f.write("deep")
try:
    os.setxattr(name, "user.a", b"1")  # its attribute key would be longer than any key: refused
    sys.exit("setxattr of an over-long attribute key succeeded")
except OSError as e:
    assert e.errno in (errno.ENAMETOOLONG, errno.ENOSPC, errno.E2BIG), e
assert os.listdir(".") == [name], os.listdir(".")
assert open(name).read() == "deep"
try:
    open(name + "g", "w")                 # one byte longer: its record cannot be stored
    sys.exit("a file with an over-long record was created")
except OSError as e:
    assert e.errno == errno.ENAMETOOLONG, e
os.unlink(name)
assert os.listdir(".") == []
PY
    [ "$status" -eq 0 ] || { echo "$output" | cut -c1-300; false; }
    rm -rf "$M"/d*
    run ls -A "$M"
    [ "$output" = "" ]
}

@test "listing a directory skips its children's subtrees" {
    fs_mount
    mkdir -p "$M/big/deep"
    (cd "$M/big/deep" && seq 1 2000 | xargs touch)
    for i in $(seq 1 10); do echo $i > "$M/big/f$i"; done
    run ls "$M/big"
    [ "${#lines[@]}" -eq 11 ]
    run ls "$M/big/deep"
    [ "${#lines[@]}" -eq 2000 ]
}

@test "st_ino is stable across remounts" {
    fs_mount
    mkdir "$M/d"
    echo x > "$M/d/f"
    a=$(stat -c %i "$M/d/f")
    fs_remount
    [ "$(stat -c %i "$M/d/f")" = "$a" ]
}

@test "a rename keeps the times of files whose times are their value's write time" {
    # Files put through the API show their value's write time (no record, or a value newer than its record). The
    # engine stamps a moved value with the move's time, so a rename must not let that show (it did, once the
    # caches forgot the file: after a remount).
    kv put "$D" top/sub/plain "no record"
    kv put "$D" top/sub/rewritten first
    kv put "$D" top/alone "no record"
    fs_mount -o no_writeback_cache # else the kernel sends the file's times after a rename of the file itself
    chmod 0600 "$M/top/sub/rewritten"
    sleep 0.1
    kv put "$D" top/sub/rewritten second
    before=$(stat -c '%a %y' "$M/top/sub/plain" "$M/top/sub/rewritten" "$M/top/alone")
    sleep 0.1
    mkdir "$M/dst"
    mv "$M/top/sub" "$M/dst/sub"
    mv "$M/top/alone" "$M/dst/alone"
    fs_remount
    after=$(stat -c '%a %y' "$M/dst/sub/plain" "$M/dst/sub/rewritten" "$M/dst/alone")
    echo "before: $before"
    echo "after:  $after"
    [ "$before" = "$after" ]
}

@test "a directory that vanishes with its last key is gone for open too, not only for stat" {
    kv put "$D" r/s/t deep
    kv put "$D" r/keep x
    fs_mount
    ls "$M/r/s" >/dev/null   # the kernel now caches the entries r and r/s
    rm "$M/r/s/t"
    for i in $(seq 1 50); do [ -e "$M/r/s" ] || break; sleep 0.1; done
    sleep 0.3 # the notifier thread has had its moment
    [ ! -e "$M/r/s" ]
    # open(2) of a cached entry for writing does not ask the daemon: the kernel must have forgotten the entry
    run python3 -c 'import os, sys
try:
    os.open(sys.argv[1], os.O_WRONLY)
except OSError as e:
    print(os.strerror(e.errno))' "$M/r/s"
    [ "$output" = "No such file or directory" ]
    [ "$(cat "$M/r/keep")" = x ]
}

@test "a directory that vanishes with the unlink of its last key while that file is open is gone too" {
    # libfuse turns the unlink of an open file into a rename to a hidden name (fs_fuse.c): that, too, must tell
    # the kernel of the directories it emptied, also of one whose parent stays (r/s below r), which the kernel can
    # only forget once the last close has let go of it
    kv put "$D" r/keep x
    fs_mount
    kv put "$D" u/f one         # put while mounted, as fs_model.bats does
    kv put "$D" r/s/t deep
    run python3 -c 'import errno, os, sys, time
m = sys.argv[1]
fds = [os.open(m + "/" + p, os.O_RDWR) for p in ("u/f", "r/s/t")]
for p in ("u/f", "r/s/t"):
    os.unlink(m + "/" + p)
for fd in fds:
    os.pwrite(fd, b"written", 2)
    os.fstat(fd)
time.sleep(0.3)
for fd in fds:
    os.close(fd)
for d in ("u", "r/s"):
    deadline = time.time() + 5
    while True:
        try:
            os.close(os.open(m + "/" + d, os.O_WRONLY))  # trusts a cached entry: EISDIR while the kernel keeps it
            r = "there"
        except OSError as e:
            r = errno.errorcode[e.errno]
        if r == "ENOENT" or time.time() > deadline:
            break
        time.sleep(0.02)
    print(d, r)' "$M"
    echo "$output"
    [ "$status" -eq 0 ]
    [ "${lines[0]}" = "u ENOENT" ]
    [ "${lines[1]}" = "r/s ENOENT" ]
    [ ! -e "$M/u" ]
    [ ! -e "$M/r/s" ]
    [ "$(cat "$M/r/keep")" = x ]
    [ "$(ls "$M")" = r ]
}
