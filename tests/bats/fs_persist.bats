#!/usr/bin/env bats
# fs_persist.bats — the daemon's life: mounting, the lock on DATADIR, unmounting by every route, persistence across
# remounts, and survival of fsync'ed and closed files when the daemon is killed with SIGKILL.

load helpers.bash-fs

setup() {
    fs_setup
}

teardown() {
    fs_teardown
}

# kvfs mount -o OPTION must fail, with a message matching the glob PATTERN, before doing anything: nothing mounted
# and DATADIR not even created.
refused() {
    run t "$KVFS" mount -o "$1" "$D" "$M"
    [ "$status" -eq 1 ]
    [[ "$output" == $2 ]]
    ! is_mounted || return 1
    [ ! -e "$D" ]
}

@test "mount creates DATADIR 0700 and returns only when usable" {
    fs_mount
    [ "$(stat -c %a "$D")" = 700 ]
    # usable at once, no sleep
    echo x > "$M/f"
    [ "$(cat "$M/f")" = x ]
    grep -q " $M fuse.kvfs " /proc/mounts
}

@test "a second mount of the same store fails with a clear message" {
    fs_mount
    mkdir "$T/mnt2"
    run t "$KVFS" mount "$D" "$T/mnt2"
    [ "$status" -ne 0 ]
    [[ "$output" == *"in use"* ]]
    ! grep -q " $T/mnt2 " /proc/mounts
}

@test "a mount that would cover its own DATADIR is refused (the daemon would write its files through itself)" {
    mkdir -p "$D"
    # the same directory, also spelled differently; DATADIR below MOUNTPOINT
    for args in "$D $D" "$D $D/." "$D $T" "$T/data/ $T"; do
        run t "$KVFS" mount $args
        [ "$status" -eq 1 ]
        [[ "$output" == *"the mount would hide the store's own files"* ]]
        ! grep -q " $T[/ ].*fuse" /proc/mounts
    done
    (cd "$T" && run t "$KVFS" mount data data && [ "$status" -eq 1 ])
    ! grep -q "fuse.kvfs" <(grep " $T" /proc/mounts)
    # MOUNTPOINT below DATADIR leaves the store's files reachable: allowed
    mkdir -p "$D/mnt"
    t "$KVFS" mount "$D" "$D/mnt"
    head -c 3000000 /dev/urandom > "$T/big"
    cp "$T/big" "$D/mnt/big"
    cmp "$T/big" "$D/mnt/big"
    t fusermount3 -u "$D/mnt"
    t "$KVFS" get "$D" big | cmp - "$T/big"   # waits for the daemon to close the store
}

@test "mount right after fusermount3 -u works: it waits for the daemon that is still closing the store" {
    # After its unmount a daemon writes what it buffered and closes the engine, holding the store's lock meanwhile;
    # a mount at that moment used to fail at once with "in use". A mounted store still fails at once.
    fs_mount
    for i in 1 2 3; do
        dd if=/dev/urandom of="$M/big$i" bs=1M count=16 status=none
        t fusermount3 -u "$M"
        run t "$KVFS" mount "$D" "$M"
        [ "$status" -eq 0 ] || { echo "round $i: $output"; false; }
        is_mounted
    done
    [ "$(ls "$M" | wc -l)" -eq 3 ]
    mkdir "$T/mnt2"
    SECONDS=0
    run t "$KVFS" mount "$D" "$T/mnt2"
    [ "$status" -ne 0 ]
    [[ "$output" == *"in use"* ]]
    [ "$SECONDS" -le 2 ]
    # a store that `kvfs serve` holds (a daemon answers on its socket) fails at once too
    fs_unmount
    "$KVFS" serve "$D" 3>&- &
    local serve=$!
    for _ in $(seq 1 100); do [ -S "$D/kvfs.sock" ] && break; sleep 0.05; done
    SECONDS=0
    run t "$KVFS" mount "$D" "$M"
    kill "$serve"
    wait "$serve" || true
    [ "$status" -ne 0 ]
    [[ "$output" == *"in use"* ]]
    [ "$SECONDS" -le 2 ]
}

@test "mount after kill -9 detaches the dead mount the daemon left, instead of going on top of it" {
    # A killed daemon leaves its mount answering ENOTCONN. kvfs mount used to fail on it ("Transport endpoint is
    # not connected") or mount on top of it, so that the next unmount found the dead one again.
    fs_mount
    echo kept > "$M/f"
    sync "$M/f"
    for round in 1 2; do
        kill -9 "$(daemon_pid)"
        sleep 0.2
        [ "$round" = 1 ] && { ls "$M" >/dev/null 2>&1 || true; } # with its attributes cached, and without
        run t "$KVFS" mount "$D" "$M"
        [ "$status" -eq 0 ] || { echo "round $round: $output"; false; }
        [[ "$output" == *"detached the dead mount"* ]]
        [ "$(grep -c " $M fuse" /proc/mounts)" -eq 1 ]
        [ "$(cat "$M/f")" = kept ]
    done
    # something else mounted over the dead mount is not taken for it: nothing is detached
    kill -9 "$(daemon_pid)"
    sleep 0.2
    mount -t tmpfs -o size=1m tmpfs "$M"
    run t "$KVFS" mount "$D" "$M"
    [ "$status" -eq 0 ]
    [[ "$output" != *"detached"* ]]
    [ "$(cat "$M/f")" = kept ]
    fs_unmount
    grep -q " $M tmpfs " /proc/mounts
    umount "$M"
    umount -l "$M"
    ! is_mounted
}

@test "everything survives unmount and remount" {
    fs_mount
    mkdir -p "$M/d/empty"
    echo content > "$M/d/f"
    chmod 0600 "$M/d/f"
    touch -d '2010-01-01 00:00:00.25' "$M/d/f"
    ln -s d/f "$M/link"
    setfattr -n user.k -v v "$M/d/f" 2>/dev/null || true
    head -c 2000000 /dev/urandom > "$T/big"
    cp "$T/big" "$M/big"
    before=$(tree_attrs_with_times "$M")
    fs_remount
    [ -d "$M/d/empty" ]
    [ "$(cat "$M/d/f")" = content ]
    cmp "$T/big" "$M/big"
    [ "$(tree_attrs_with_times "$M")" = "$before" ]
    if command -v getfattr >/dev/null; then
        [ "$(getfattr --only-values -n user.k "$M/d/f")" = v ]
    fi
}

@test "random 4 KiB writes into a large file read back right, also after a remount" {
    fs_mount
    head -c $((64 << 20)) /dev/urandom > "$T/ref"
    cp "$T/ref" "$M/f"
    # the same 2,000 blocks, at random places, into both copies (perl-base is part of every Debian system)
    perl -e '
        srand(42);
        open(my $x, "+<", $ARGV[0]) or die "$ARGV[0]: $!";
        open(my $y, "+<", $ARGV[1]) or die "$ARGV[1]: $!";
        for my $i (1 .. 2000) {
            my $off = int(rand(16384)) * 4096;
            my $blk = pack("N", $i) x 1024;
            for my $fh ($x, $y) {
                sysseek($fh, $off, 0) or die "seek: $!";
                syswrite($fh, $blk) == 4096 or die "write: $!";
            }
        }
        close($x) or die; close($y) or die "close: $!";' "$T/ref" "$M/f"
    cmp "$T/ref" "$M/f"
    # the file is that fragmented: its blob reference went paged (docs/format.md, "Paged reference")
    run kv dump "$(ls "$D"/*.log | tail -n 1)"
    [ "$status" -eq 0 ]
    [[ "$output" == *" pages: [page "* ]]
    fs_remount
    cmp "$T/ref" "$M/f"
}

@test "SIGTERM and SIGINT unmount cleanly, with everything written" {
    fs_mount
    echo one > "$M/a"
    kill -TERM "$(daemon_pid)"
    for i in $(seq 1 100); do is_mounted || break; sleep 0.05; done
    fs_unmount
    fs_mount
    [ "$(cat "$M/a")" = one ]
    echo two > "$M/b"
    kill -INT "$(daemon_pid)"
    for i in $(seq 1 100); do is_mounted || break; sleep 0.05; done
    fs_unmount
    fs_mount
    [ "$(cat "$M/b")" = two ]
}

@test "kill -9: fsync'ed and closed files survive" {
    fs_mount
    python3 - "$M" <<'PY'
import os, sys
m = sys.argv[1]
with open(os.path.join(m, "synced"), "wb") as f:
    f.write(b"x" * 100000)
    f.flush()
    os.fsync(f.fileno())
with open(os.path.join(m, "closed"), "wb") as f:
    f.write(b"closed content")
os.mkdir(os.path.join(m, "dir"))
PY
    fs_crash
    fs_mount
    [ "$(stat -c %s "$M/synced")" -eq 100000 ]
    [ "$(cat "$M/closed")" = "closed content" ]
    [ -d "$M/dir" ]
}

@test "after a power loss that kept a closed file's log record but not its bytes, the mount warns and serves the rest" {
    fs_mount
    head -c 100000 /dev/urandom > "$T/a"
    dd if="$T/a" of="$M/a" bs=100000 conv=fsync status=none # synced: its blob bytes are on disk
    blob=$(ls "$D"/*.blob | tail -n 1)
    synced=$(stat -c %s "$blob")
    head -c 100000 /dev/urandom > "$M/b" # closed, in the log, never synced
    fs_crash
    # the power loss: the log kept b's record, the blob file lost what was not synced
    [ "$(stat -c %s "$blob")" -gt "$synced" ]
    truncate -s "$synced" "$blob"
    fs_mount_logged
    grep -q "recovered from a power loss: [0-9]* batch(es) written but never synced were dropped" "$T/daemon.log"
    cmp "$T/a" "$M/a"
    # b's creation was a batch of its own, before the one that wrote its bytes: b is there, empty
    [ "$(stat -c %s "$M/b")" -eq 0 ]
    run kv check "$D"
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "a damaged table: reads through the mount fail with EIO, and the daemon's log names the file" {
    fs_mount
    mkdir "$M/d"
    for i in $(seq 1 300); do head -c 1000 /dev/urandom > "$M/d/f$i"; done # kept in the tree (under 4 KiB)
    fs_unmount
    kv compact "$D" >/dev/null # into tables
    sst=$(ls -S "$D"/*.sst | head -n 1)
    size=$(stat -c %s "$sst")
    # one byte in the middle of the table: a data block
    printf '\xff' | dd of="$sst" bs=1 seek=$((size / 2)) conv=notrunc status=none
    fs_mount_logged
    bad=0
    for i in $(seq 1 300); do t cat "$M/d/f$i" > /dev/null 2>>"$T/cat.err" || bad=$((bad + 1)); done
    echo "$bad files unreadable"; head -3 "$T/cat.err"; cat "$T/daemon.log"
    [ "$bad" -ge 1 ]
    grep -q "Input/output error" "$T/cat.err"
    grep -q "failed: .*$(basename "$sst").* at offset [0-9]" "$T/daemon.log"
    # one message per 10 s for the same kind, however many reads failed
    [ "$(grep -c "failed:" "$T/daemon.log")" -le 2 ]
    fs_unmount
    run kv check "$D"
    [ "$status" -ne 0 ]
    [[ "$output" == *"$(basename "$sst")"* ]]
}

@test "umount works as well as fusermount3 -u" {
    fs_mount
    echo z > "$M/z"
    pid=$(daemon_pid)
    t umount "$M"
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    ! kill -0 "$pid" 2>/dev/null
    fs_mount
    [ "$(cat "$M/z")" = z ]
}

@test "foreground mode (-f) serves until unmounted" {
    (t "$KVFS" mount -f "$D" "$M" 2>"$T/fg.err" &)
    for i in $(seq 1 100); do is_mounted && break; sleep 0.05; done
    is_mounted
    echo fg > "$M/f"
    fs_unmount
    fs_mount
    [ "$(cat "$M/f")" = fg ]
}

@test "the options are accepted" {
    fs_mount -o sync,cache_size=8M,memtable_size=4M,compression=off,default_file_mode=0600,default_dir_mode=0700,blob_threshold=8K
    echo x > "$M/f"
    [ "$(cat "$M/f")" = x ]
    head -c 20000 /dev/urandom > "$T/big"
    cp "$T/big" "$M/big"
    cmp "$T/big" "$M/big"
    fs_unmount
    kv put "$D" raw/key value
    fs_mount -o default_file_mode=0600,default_dir_mode=0700,default_uid=12,default_gid=34
    [ "$(stat -c '%a %u %g' "$M/raw/key")" = "600 12 34" ]
    [ "$(stat -c '%a' "$M/raw")" = "700" ]
    run t "$KVFS" mount -o compression=maybe "$D" "$T/mnt"
    [ "$status" -ne 0 ]
    run t "$KVFS" mount -o blob_threshold=0 "$D" "$T/mnt"
    [ "$status" -ne 0 ]
    [[ "$output" == *"blob_threshold '0' is too small: it must be at least 1"* ]]
    # numbers: no sign, no garbage; a cache timeout of 0 is kept (not taken for "unset")
    for o in default_uid=-5 default_gid=x spin=-1 cache_timeout=-1; do
        run t "$KVFS" mount -o "$o" "$D" "$T/mnt"
        [ "$status" -ne 0 ]
        [[ "$output" == *"-o ${o%%=*}: not a number"* ]]
    done
    fs_unmount
    fs_mount -o cache_timeout=0
    echo old > "$M/t"
    stat "$M/t" >/dev/null
    kv put "$D" t newer-content   # through the control socket; with no kernel caching the new size shows at once
    [ "$(stat -c %s "$M/t")" -eq 13 ]
    fs_unmount
    # the mount point must be a directory
    touch "$T/file"
    run t "$KVFS" mount "$D" "$T/file"
    [ "$status" -ne 0 ]
    [[ "$output" == *"not a directory"* ]]
    ! grep -q " $T/file " /proc/mounts
}

@test "size options refuse a sign, and a write buffer too small for the engine, naming the option" {
    fs_unmount
    # strtoull takes "-1" as the largest number: a cache or threshold of 16 EiB must not be accepted silently
    for o in cache_size=-1 memtable_size=-8M blob_threshold=-5 cache_size=+4M "cache_size= 4M"; do
        refused "$o" "*bad ${o%%=*} '*"
    done
    for o in memtable_size=0 memtable_size=1K; do
        refused "$o" "*memtable_size*at least 4K*"
    done
    fs_mount -o memtable_size=4K,cache_size=0
    echo x > "$M/f"
    [ "$(cat "$M/f")" = x ]
}

@test "size options take K, M, G with an optional i and B (64M, 64Mi, 64MiB, 64MB)" {
    for o in cache_size=8MiB,memtable_size=4Mi cache_size=8mb,memtable_size=4096KiB,blob_threshold=1MiB; do
        fs_mount -o "$o"
        echo x > "$M/f"
        [ "$(cat "$M/f")" = x ]
        # the daemon's block cache (kvfs stats through its socket)
        [ "$(kv stats "$D" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["cache"]["capacity"])')" \
            -eq $((8 << 20)) ]
        fs_unmount
    done
    rm -rf "$D"
    for o in cache_size=8MiBB cache_size=8iB cache_size=8Bi cache_size=8B cache_size=8i cache_size=8MBi; do
        refused "$o" "*bad cache_size '*"
    done
}

@test "a mount refused for its mount point or a FUSE option leaves no DATADIR behind" {
    run t "$KVFS" mount "$D" "$T/no-such-dir"
    [ "$status" -eq 1 ]
    [[ "$output" == *"no-such-dir: No such file or directory"* ]]
    [ ! -e "$D" ]
    touch "$T/file"
    run t "$KVFS" mount "$D" "$T/file"
    [ "$status" -eq 1 ]
    [[ "$output" == *"not a directory"* ]]
    [ ! -e "$D" ]
    # an option FUSE does not know: refused before DATADIR is made
    run t "$KVFS" mount -o nosuchoption "$D" "$M"
    [ "$status" -eq 1 ]
    [[ "$output" == *"unknown option"*"nosuchoption"* ]]
    [[ "$output" == *"bad FUSE options"* ]]
    [ ! -e "$D" ]
    ! is_mounted
    # DATADIR inside the mount point: refused, and the directory it made for it is gone again
    run t "$KVFS" mount "$M/data" "$M"
    [ "$status" -eq 1 ]
    [[ "$output" == *"the mount would hide the store's own files"* ]]
    [ ! -e "$M/data" ]
}

@test "libfuse's caching options that kvfs sets itself are refused, not silently overridden" {
    fs_unmount
    for o in entry_timeout=5 attr_timeout=0 ac_attr_timeout=1 negative_timeout=2 kernel_cache auto_cache \
        noauto_cache direct_io hard_remove use_ino readdir_ino; do
        refused "$o" "*mount: -o ${o%%=*} is set by kvfs (*cache_timeout*"
    done
}

@test "-o max_read=N mounts (libfuse fails the mount's start unless the daemon asks for the same size)" {
    fs_mount -o max_read=131072
    grep -q " $M fuse.kvfs .*max_read=131072" /proc/mounts
    head -c 1000000 /dev/urandom > "$T/r"
    cp "$T/r" "$M/r"
    fs_remount -o max_read=131072
    cmp "$T/r" "$M/r"
    kv get "$D" r | cmp - "$T/r"
}

@test "size options refuse what cannot be counted or held, naming the option and the largest value" {
    fs_unmount
    mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    # past 64 bits; memory budgets past this machine's memory (twice it, whatever it is); a blob threshold past 512M
    # (a value below it goes whole into one write-ahead-log record, of at most 1 GiB)
    for o in cache_size=99999999999G memtable_size=18446744073709551616 blob_threshold=17179869184G \
        cache_size=99999999G memtable_size=99999999G cache_size=$((mem_kb * 2))K memtable_size=$((mem_kb * 2))K \
        blob_threshold=513M blob_threshold=2G; do
        case $o in
        blob_threshold=*) refused "$o" "*blob_threshold '${o#*=}' is too large: it must be at most 512M (*" ;;
        *) refused "$o" "*${o%%=*} '${o#*=}' is too large: it must be at most *M (this machine's memory)*" ;;
        esac
    done
    fs_mount -o cache_size=$((mem_kb / 2))K,memtable_size=64M,blob_threshold=512M
    head -c 100000 /dev/urandom > "$T/f"
    cp "$T/f" "$M/f"
    fs_remount
    cmp "$T/f" "$M/f"
}

@test "number options refuse values out of range, naming the option and the largest value" {
    fs_unmount
    # spin was silently cut to 100000; (uid_t)-1 and (gid_t)-1 mean "no change" to the kernel, not an owner
    for o in spin=100001 spin=100000000 spin=99999999999999999999 default_uid=4294967295 default_gid=4294967295 \
        default_uid=4294967296 default_gid=99999999999; do
        case $o in
        spin=*) refused "$o" "*spin '${o#*=}' is too large: it must be at most 100000 (microseconds*" ;;
        *) refused "$o" "*${o%%=*} '${o#*=}' is too large: it must be at most 4294967294 (*no change*" ;;
        esac
    done
    kv put "$D" k v
    fs_mount -o spin=100000,default_uid=4294967294,default_gid=4294967294
    [ "$(stat -c '%u %g' "$M/k")" = "4294967294 4294967294" ]
}

@test "fsname and subtype are kvfs's own: a mount that would not be known as this store's is refused" {
    fs_unmount
    # kvfs mount (dead mounts, "already mounted") and kvfs checkpoint (into its own mount) find a store's mount in the
    # mount table by its type, fuse.kvfs, and source, DATADIR
    for o in fsname=foo subtype=bar "fsname=$D"; do
        refused "$o" "*-o ${o%%=*} is set by kvfs*"
    done
}

@test "cache_timeout takes a decimal number of seconds and nothing else" {
    fs_unmount
    # "%lf" read the number at the start and ignored the rest, and took inf, hex and exponents
    for v in 5x inf 1e999 0x10 " 5" "" 1e3 5s . -0; do
        refused "cache_timeout=$v" "*-o cache_timeout: not a number of seconds at least 0*"
    done
    fs_mount -o cache_timeout=0.5
    echo x > "$M/f"
    [ "$(cat "$M/f")" = x ]
}

@test "mode options take octal permission bits only, naming the option and the range" {
    fs_unmount
    # %o took 0648 as 064 and -1 as 037777777777, and file type bits (177777) were dropped without a word
    for o in default_file_mode=177777 default_dir_mode=40755 default_file_mode=10000 default_file_mode=0648 \
        default_dir_mode=-1 default_file_mode=rw default_file_mode= default_dir_mode=0x1ff "default_file_mode= 644" \
        default_dir_mode=7777777777777777777777777; do
        refused "$o" "*${o%%=*} '${o#*=}' is not a permission mode: it must be octal, 0 to 7777*"
    done
    kv put "$D" raw/key value
    fs_mount -o default_file_mode=7777,default_dir_mode=0
    [ "$(stat -c %a "$M/raw/key")" = 7777 ]
    [ "$(stat -c %a "$M/raw")" = 0 ]
}

@test "the request loop's polling (-o spin) serves requests and stops when the mount is idle" {
    # utime + stime of the daemon, in clock ticks
    cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
    for spin in 0 50 ""; do
        if [ -n "$spin" ]; then fs_mount -o spin=$spin; else fs_mount; fi
        mkdir "$M/d$spin"
        for i in $(seq 1 200); do echo "$i" > "$M/d$spin/f$i"; done
        [ "$(cat "$M/d$spin/f200")" = 200 ]
        [ "$(ls "$M/d$spin" | wc -l)" -eq 200 ]
        # idle: the reader sleeps once its polling window has passed (a spinning daemon would use ~1 s of CPU)
        pid=$(daemon_pid)
        sleep 0.2
        before=$(cpu_ticks "$pid")
        sleep 1
        after=$(cpu_ticks "$pid")
        echo "spin=$spin: $((after - before)) ticks of CPU while idle for 1 s"
        [ $((after - before)) -le $(($(getconf CLK_TCK) / 10)) ]
        fs_unmount
    done
}

@test "the fstab helper mounts a fuse.kvfs entry the way mount(8) calls it" {
    mkdir -p "$T/bin"
    ln -s "$KVFS" "$T/bin/kvfs"
    # mount(8) runs: mount.fuse.kvfs DATADIR MOUNTPOINT -o OPTIONS (fstab-only options must be dropped)
    PATH="$T/bin:$PATH" t sh "$KVFS_ROOT/mount/mount.kvfs" "$D" "$M" -o defaults,_netdev,nofail
    grep -q " $M fuse.kvfs " /proc/mounts
    echo via-fstab > "$M/f"
    fs_unmount # and wait for the daemon to close the store: the next mount needs its lock
    PATH="$T/bin:$PATH" t sh "$KVFS_ROOT/mount/mount.kvfs" "$D" "$M" -o ro,noauto
    grep " $M fuse.kvfs " /proc/mounts | grep -q "[ ,]ro[ ,]"
    [ "$(cat "$M/f")" = via-fstab ]
    run sh -c "echo x > '$M/g'"
    [ "$status" -ne 0 ]
}

# kvfs mount ARGS... with /dev/fuse unusable: /dev/null bound over it in a mount namespace of its own, so that FUSE
# refuses the mount only after kvfs has checked its options and opened the store.
mount_without_fuse() {
    t unshare -m sh -c 'mount --bind /dev/null /dev/fuse && exec "$0" mount "$@"' "$KVFS" "$@"
}

@test "a mount FUSE refuses after the store was opened removes the DATADIR it made, and nothing else" {
    [ "$(id -u)" = 0 ] && command -v unshare >/dev/null || skip "needs root and unshare (a mount namespace)"
    unshare -m true 2>/dev/null || skip "cannot make a mount namespace here"
    for f in "" -f; do
        run mount_without_fuse $f "$D" "$M"
        [ "$status" -eq 1 ]
        [[ "$output" == *"cannot mount on $M"* ]]
        [[ "$output" == *"removed $D, which this mount had made"* ]]
        [ ! -e "$D" ]
        ! is_mounted
    done
    # a DATADIR that was there before stays, empty or with a store, and the store keeps its data
    mkdir "$D"
    run mount_without_fuse "$D" "$M"
    [ "$status" -eq 1 ]
    [[ "$output" != *"removed"* ]]
    [ -d "$D" ]
    rm -rf "$D"
    kv put "$D" k v
    run mount_without_fuse "$D" "$M"
    [ "$status" -eq 1 ]
    [[ "$output" != *"removed"* ]]
    [ "$(kv get "$D" k)" = v ]
    # and the same mount with /dev/fuse works
    rm -rf "$D"
    fs_mount
    echo x > "$M/f"
    fs_unmount
    [ "$(kv get "$D" f)" = x ]
}

@test "kvfs mount -d prints libfuse's banner once (the check of the FUSE options says nothing unless it refuses them)" {
    fs_mount_logged -d
    echo x > "$M/f"
    fs_unmount
    cat "$T/daemon.log"
    [ "$(grep -c '^FUSE library version' "$T/daemon.log")" -eq 1 ]
    [ "$(grep -c '^nullpath_ok' "$T/daemon.log")" -eq 1 ]
    grep -q 'opcode: INIT' "$T/daemon.log"
    # a refused option is still named
    run t "$KVFS" mount -d -o nosuchoption "$T/d2" "$M"
    [ "$status" -eq 1 ]
    [[ "$output" == *"unknown option"*"nosuchoption"* ]]
    [ ! -e "$T/d2" ]
}
