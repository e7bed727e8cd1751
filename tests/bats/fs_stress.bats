#!/usr/bin/env bats
# fs_stress.bats — concurrency (several processes writing, renaming and listing in the same directories), a full
# disk (ENOSPC with a small tmpfs as DATADIR: nothing written is lost, writing works again once space is freed, also
# by deleting files through the mount), the change feed bounded by the disk's size, and
# bounded daemon memory for a large file, and a random mix of mount operations and kvfs tools (mixops.py).

load helpers.bash-fs

setup() {
    fs_setup
}

teardown() {
    fs_teardown
}

@test "several processes write, rename and list at once" {
    fs_mount
    mkdir "$M/shared"
    for w in 1 2 3 4; do
        (
            for i in $(seq 1 150); do
                echo "$w-$i" > "$M/shared/.tmp-$w-$i"
                mv "$M/shared/.tmp-$w-$i" "$M/shared/f-$w-$i"
                [ $((i % 10)) -eq 0 ] && ls "$M/shared" > /dev/null
            done
        ) &
    done
    ( for i in $(seq 1 50); do ls -la "$M/shared" > /dev/null; done ) &
    wait
    run sh -c "ls '$M/shared' | wc -l"
    [ "$output" -eq 600 ]
    for w in 1 2 3 4; do
        for i in 1 77 150; do
            [ "$(cat "$M/shared/f-$w-$i")" = "$w-$i" ]
        done
    done
    ! ls -a "$M/shared" | grep -q '^\.tmp'
    fs_remount
    run sh -c "ls '$M/shared' | wc -l"
    [ "$output" -eq 600 ]
}

@test "reads through open descriptors see the file's bytes while it is renamed back and forth" {
    fs_mount
    run python3 - "$M" <<'PY'
import multiprocessing as mp, os, sys
d = os.path.join(sys.argv[1], "rr")
os.makedirs(d)
p, q = os.path.join(d, "f"), os.path.join(d, "g")
data = os.urandom(1 << 20)
with open(p, "wb") as f:
    f.write(data)
os.sync()
stop = mp.Event()
bad = mp.Value("i", 0)
reads = mp.Value("i", 0)
def renamer():
    for _ in range(1500):
        try:
            os.rename(p, q)
            os.rename(q, p)
        except FileNotFoundError:
            pass
    stop.set()
def reader():
    fd = None
    while fd is None:  # the renamer may have the file under its other name right now
        for name in (p, q):
            try:
                fd = os.open(name, os.O_RDONLY)
                break
            except FileNotFoundError:
                pass
    while not stop.is_set():
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # each read goes to the daemon
        ok = os.pread(fd, 1 << 20, 0) == data
        with bad.get_lock():
            bad.value += not ok
            reads.value += 1
ps = [mp.Process(target=renamer), mp.Process(target=reader), mp.Process(target=reader)]
for x in ps: x.start()
for x in ps: x.join()
print("reads", reads.value, "bad", bad.value)
sys.exit(1 if bad.value or reads.value == 0 else 0)
PY
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "ENOSPC when the backing disk is full; nothing lost; works again after freeing" {
    mkdir -p "$D"
    mount -t tmpfs -o size=32m tmpfs "$D" || skip "cannot mount a tmpfs here"
    # ballast beside the store, to free space later without depending on the engine's garbage collection
    head -c 12M /dev/zero > "$D/ballast"
    fs_mount -o memtable_size=1M
    echo keep > "$M/keep"
    run sh -c "dd if=/dev/urandom of='$M/fill' bs=1M count=64 conv=fsync status=none"
    [ "$status" -ne 0 ]
    [[ "$output" == *"No space left"* ]]
    [ "$(cat "$M/keep")" = keep ]
    rm -f "$D/ballast"
    echo again > "$M/again"
    [ "$(cat "$M/again")" = again ]
    rm -f "$M/fill"
    fs_remount
    [ "$(cat "$M/keep")" = keep ]
    [ "$(cat "$M/again")" = again ]
    # a store whose disk another process filled gives back its reserve: the mount (which writes a manifest and a
    # log) works
    fs_unmount
    [ -e "$D/RESERVE" ]
    head -c 64M /dev/zero > "$D/ballast" 2>/dev/null || true
    fs_mount
    [ ! -e "$D/RESERVE" ]
    [ "$(cat "$M/keep")" = keep ]
    # without a reserve to give back, it cannot be opened for writing, but it can be mounted read-only, and the
    # refusal says so
    fs_unmount
    head -c 64M /dev/zero >> "$D/ballast" 2>/dev/null || true
    run "$KVFS" mount "$D" "$M"
    [ "$status" -ne 0 ]
    [[ "$output" == *"full"*"-o ro"* ]]
    fs_mount -o ro
    [ "$(cat "$M/keep")" = keep ]
    fs_unmount
    rm -f "$D/ballast"
    fs_mount
    [ "$(cat "$M/again")" = again ]
}

@test "ENOSPC from the store's own data: deleting a file through the mount gives the space back, no remount" {
    mkdir -p "$D"
    mount -t tmpfs -o size=32m tmpfs "$D" || skip "cannot mount a tmpfs here"
    fs_mount -o memtable_size=1M
    echo keep > "$M/keep"
    run sh -c "dd if=/dev/urandom of='$M/fill' bs=1M count=64 conv=fsync status=none"
    [ "$status" -ne 0 ]
    [[ "$output" == *"No space left"* ]]
    rm -f "$M/fill"
    # the engine collects the deleted file's blob space in the background, hurried by the failed write
    free_kb=0
    for i in $(seq 1 100); do
        free_kb=$(df -k --output=avail "$D" | tail -1 | tr -d ' ')
        [ "$free_kb" -gt $((16 * 1024)) ] && break
        sleep 0.2
    done
    echo "free: ${free_kb} KiB after $i tries"
    [ "$free_kb" -gt $((16 * 1024)) ]
    head -c 8M /dev/urandom > "$D.want"
    cp "$D.want" "$M/after"
    cmp "$D.want" "$M/after"
    rm -f "$D.want"
    [ "$(cat "$M/keep")" = keep ]
    [ ! -e "$M/fill" ]
    fs_remount
    [ "$(cat "$M/keep")" = keep ]
    [ ! -e "$M/fill" ]
    [ "$(stat -c %s "$M/after")" -eq $((8 * 1024 * 1024)) ]
    fs_unmount
    "$KVFS" check "$D"
}

@test "rm of a large file gives its space back within seconds (no full disk, no wait for an idle minute)" {
    fs_mount
    head -c 48M /dev/urandom > "$M/big"
    sync "$M/big"
    before=$(du -sk "$D" | cut -f1)
    rm "$M/big"
    after=$before
    for i in $(seq 1 75); do
        after=$(du -sk "$D" | cut -f1)
        [ "$after" -lt $((before - 40 * 1024)) ] && break
        sleep 0.2
    done
    echo "DATADIR ${before} KiB before, ${after} KiB after $i tries"
    [ "$after" -lt $((before - 40 * 1024)) ]
}

@test "a store filled with small files: rm -rf of them succeeds and gives the space back, no remount" {
    # Small files live in the tree, whose space comes back only by compaction, and a compaction needs room for its
    # output first. Writes used to wait for ever at the level-0 stop trigger (a process stuck in close()), and then
    # every unlink failed too, leaving the store full until space was freed elsewhere.
    mkdir -p "$D"
    mount -t tmpfs -o size=24m tmpfs "$D" || skip "cannot mount a tmpfs here"
    fs_mount_logged -o memtable_size=1M
    echo keep > "$M/keep"
    run timeout 300 python3 - "$M" <<'PY'
import os, sys
m, n = sys.argv[1], 0
try:
    while n < 100000:
        d = f"{m}/small/d{n // 1000}"
        if n % 1000 == 0:
            os.makedirs(d, exist_ok=True)
        with open(f"{d}/f{n}", "wb") as f:
            f.write(os.urandom(1500))
        n += 1
except OSError as e:
    print("stopped after", n, "files:", e)
    sys.exit(0 if e.errno == 28 else 1)
sys.exit(1)
PY
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"No space left"* ]]
    # the daemon says why, once (the failures that follow within 10 s are counted, not repeated)
    cat "$T/daemon.log"
    grep -q "a write failed: .*no space left" "$T/daemon.log"
    [ "$(grep -c "no space left" "$T/daemon.log")" -le 2 ]
    # emptying a file is a removal too, and so are removing a file still open and renaming one
    : > "$M/small/d0/f1"
    [ "$(stat -c %s "$M/small/d0/f1")" -eq 0 ]
    exec 7< "$M/small/d0/f2"
    rm "$M/small/d0/f2"
    [ "$(head -c 1500 <&7 | wc -c)" -eq 1500 ]
    exec 7<&-
    mv "$M/small/d0/f3" "$M/small/d0/g3"
    [ "$(stat -c %s "$M/small/d0/g3")" -eq 1500 ]
    run timeout 300 rm -rf "$M/small"
    echo "$output" | head -5
    [ "$status" -eq 0 ]
    [ ! -e "$M/small" ]
    # the compaction that drops the deleted files runs once their deletes are in tables
    used_kb=0
    for i in $(seq 1 150); do
        used_kb=$(df -k --output=used "$D" | tail -1 | tr -d ' ')
        [ "$used_kb" -lt $((12 * 1024)) ] && break
        sleep 0.2
    done
    echo "used: ${used_kb} KiB after $i tries"
    [ "$used_kb" -lt $((12 * 1024)) ]
    echo again > "$M/again"
    [ "$(cat "$M/keep")" = keep ]
    fs_remount
    [ "$(cat "$M/again")" = again ]
    [ "$(ls "$M")" = "$(printf 'again\nkeep')" ]
    fs_unmount
    "$KVFS" check "$D"
}

@test "a disk another process filled: rm -rf through the mount succeeds on the store's reserve" {
    # The store stops adding data at the disk's last bytes, but another process does not: once it took them, every
    # unlink failed as soon as the log's space allocated ahead was used up (after about 300 of 15,000 files here).
    # The store now holds those bytes in DATADIR/RESERVE and gives them back when the disk is full all the same.
    mkdir -p "$T/disk"
    mount -t tmpfs -o size=32m tmpfs "$T/disk" || skip "cannot mount a tmpfs here"
    D="$T/disk/data"
    fs_mount -o memtable_size=1M,reserve=off
    [ ! -e "$D/RESERVE" ]
    fs_remount -o memtable_size=1M
    [ "$(stat -c %s "$D/RESERVE")" -eq $((2 * 1024 * 1024)) ] # a memtable and 1 MiB
    run timeout 120 python3 - "$M" <<'PY'
import os, sys
for d in range(8):
    os.makedirs(f"{sys.argv[1]}/small/d{d}")
    for i in range(1000):
        with open(f"{sys.argv[1]}/small/d{d}/f{i}", "w") as f:
            f.write(f"file {d}/{i}: some small text that lives in the tree\n")
PY
    [ "$status" -eq 0 ]
    echo keep > "$M/keep"
    sync
    # another process takes every byte left
    run dd if=/dev/zero of="$T/disk/filler" bs=64k status=none
    [ "$(df -k --output=avail "$D" | tail -1 | tr -d ' ')" -eq 0 ]
    run timeout 120 rm -rf "$M/small"
    echo "$output" | head -5
    [ "$status" -eq 0 ]
    [ ! -e "$M/small" ]
    [ ! -e "$D/RESERVE" ]
    kv stats "$D" | grep -q "given back 1 times"
    [ "$(cat "$M/keep")" = keep ]
    # writes that add data wait for space; once it is freed they work, and the reserve comes back
    rm -f "$T/disk/filler"
    echo again > "$M/again"
    sleep 1.2 # writers look at the disk once a second
    echo more > "$M/more"
    [ -e "$D/RESERVE" ]
    fs_remount -o memtable_size=1M
    [ ! -e "$M/small" ]
    [ "$(cat "$M/again")" = again ]
    fs_unmount
    "$KVFS" check "$D"
}

@test "many files open for writing at once: the daemon's write buffers stay bounded" {
    # without the kernel's writeback cache every small write reaches the daemon, which buffers it per open file
    fs_mount -o no_writeback_cache
    pid=$(daemon_pid)
    run python3 - "$M" "$pid" 300 <<'PY'
import os, sys
m, pid, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
fds = [os.open(f"{m}/f{i:03d}", os.O_CREAT | os.O_WRONLY, 0o644) for i in range(n)]
for k in range(255):  # 255 writes of 4 KiB to each file, all of them open: 300 buffers' worth
    for i, fd in enumerate(fds):
        os.write(fd, bytes([(i + k) % 251 + 1]) * 4096)
rss = int([l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0])
for fd in fds:
    os.close(fd)
for i in range(n):
    with open(f"{m}/f{i:03d}", "rb") as f:
        data = f.read()
    want = b"".join(bytes([(i + k) % 251 + 1]) * 4096 for k in range(255))
    assert data == want, f"f{i:03d} differs"
print(f"resident {rss} kB with {n} files open")
sys.exit(0 if rss < 160 * 1024 else 1)
PY
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "writing a 4 GiB file with dd keeps the daemon's memory under 300 MiB" {
    fs_mount
    pid=$(daemon_pid)
    dd if=/dev/zero of="$M/big" bs=1M count=4096 status=none
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    [ "$(stat -c %s "$M/big")" -eq $((4096 * 1024 * 1024)) ]
    rm "$M/big"
    echo "peak RSS ${rss} kB"
    [ "$rss" -lt $((300 * 1024)) ]
}

@test "a store on a small disk: the change feed keeps at most 1/32 of the disk, not 64 MiB" {
    mkdir -p "$D"
    mount -t tmpfs -o size=64m tmpfs "$D" || skip "cannot mount a tmpfs here"
    fs_mount
    # 4,000 files of 2,000 bytes (kept in the tree, so the batch log holds their contents): about 8 MB of batches
    run python3 - "$M" <<'PY'
import os, sys
d = os.path.join(sys.argv[1], "small")
os.makedirs(d)
for i in range(4000):
    with open(f"{d}/f{i:05d}", "wb") as f:
        f.write(os.urandom(2000))
PY
    [ "$status" -eq 0 ]
    fs_unmount
    feed=$(cat "$D"/BATCHLOG-* | wc -c)
    echo "batch log: $feed bytes"
    [ "$feed" -le $((3 * 1024 * 1024)) ]
    # a tool opening the unmounted store bounds it the same way, and the feed still reads
    kv put "$D" k v
    [ "$(cat "$D"/BATCHLOG-* | wc -c)" -le $((3 * 1024 * 1024)) ]
    run kv changes "$D" --since $(( $(kv stats "$D" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_sequence"])') - 1 ))
    [ "$status" -eq 0 ]
    [[ "$output" == *"put k"* ]]
}

@test "a random mix of mount operations and kvfs del/put by four processes: no hang, no EIO, the store checks clean" {
    # What this mix found: a RENAME of a name onto itself that hung the daemon in libfuse, and EIO on descriptors of
    # files a tool deleted (fs_fuse.c). Symlinks (a name changing type under a cached inode) and mmap writes (SIGBUS
    # when another process truncates) are left out: the first still can give a rare EIO (docs/design-fs.md).
    fs_mount
    local s
    for s in 1 2 3 4; do
        timeout -k 5 60 python3 "$BATS_TEST_DIRNAME/mixops.py" "$KVFS" "$D" "$M" "$s" 15 > "$T/mix_$s" 2>&1 &
    done
    local i
    for i in $(seq 1 400); do
        [ "$(grep -l '^done ' "$T"/mix_* 2> /dev/null | wc -l)" -eq 4 ] && break
        sleep 0.1
    done
    if [ "$(grep -l '^done ' "$T"/mix_* 2> /dev/null | wc -l)" -ne 4 ]; then
        pkill -9 -f -- "mount.* $D $M" || true # a hung daemon: its end frees the stuck processes
        wait
        cat "$T"/mix_*
        echo "a process did not finish: the mount hung"
        return 1
    fi
    wait
    cat "$T"/mix_*
    ! grep -q '^BAD' "$T"/mix_*
    "$KVFS" check "$D"
}
