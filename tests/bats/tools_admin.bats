#!/usr/bin/env bats
# tools_admin.bats — maintenance and history commands on a store that is not mounted: stats, compact, check,
# checkpoint (and restoring one), changes (--since, --follow, --json, eviction), prune, dump.

load helpers.bash-tools

setup() { tools_setup; }
teardown() { tools_teardown; }

# A store with some history: 30 batches of puts and deletes, one large value.
fill() {
    local i
    for i in $(seq 1 30); do
        printf 'put k%03d v%d\nput j%03d %d\n' "$i" "$i" "$i" "$i" | kv batch "$D"
        [ $((i % 7)) -ne 0 ] || kv del "$D" "j$(printf %03d $((i - 1)))"
    done
    head -c 200000 /dev/urandom > "$T/blob"
    kv put "$D" big < "$T/blob"
}

@test "stats: text and valid JSON with levels, sequence and batch-log range" {
    fill
    run kv stats "$D"
    [ "$status" -eq 0 ]
    for w in "keys (estimated)" "last sequence" "batch log" "memtable" "level 0" "block cache" "write amplification"; do
        [[ "$output" == *"$w"* ]] || { echo "missing $w"; false; }
    done
    kv stats "$D" --json | json_ok
    last=$(kv stats "$D" --json | json_get 'd["last_sequence"]')
    [ "$last" -eq 35 ]
    [ "$(kv stats "$D" --json | json_get 'd["batch_log"]["newest"]')" -eq 35 ]
    [ "$(kv stats "$D" --json | json_get 'len(d["levels"])')" -eq 7 ]
    [ "$(kv stats "$D" --json | json_get 'd["estimated_keys"] > 0')" = True ]
    [ "$(kv stats "$D" --json | json_get 'd["unsynced_batches_dropped"]')" -eq 0 ]
    [ "$(kv stats "$D" --json | json_get 'd["blob_gc_failures"]')" -eq 0 ]
    [[ "$output" != *"dropped at open"* ]] # printed only after a power loss
}

@test "compact: whole store and a range; data unchanged" {
    fill
    kv scan "$D" > "$T/before"
    kv compact "$D" --start k010 --end k020
    kv compact "$D"
    kv scan "$D" > "$T/after"
    cmp "$T/before" "$T/after"
    kv check "$D"
    # no progress bar when stderr is not a terminal
    run --separate-stderr kv compact "$D"
    [ "$status" -eq 0 ]
    [ -z "$stderr" ]
}

@test "compact: the space of a deleted large value comes back" {
    fill
    ls "$D"/*.blob
    kv del "$D" big
    kv compact "$D"
    run sh -c "ls '$D' | grep -c '[.]blob\$'"
    echo "$output"
    [ "$output" = 0 ]
    kv check "$D"
    run kv get "$D" big
    [ "$status" -ne 0 ]
}

@test "check: clean store passes; a damaged table is reported with file and offset, exit 1" {
    fill
    kv compact "$D"
    run kv check "$D"
    [ "$status" -eq 0 ]
    [ "$output" = "no problems found" ]
    sst=$(ls "$D"/*.sst | head -n 1)
    name=$(basename "$sst")
    # flip bytes inside the first data block
    printf '\xde\xad\xbe\xef' | dd of="$sst" bs=1 seek=10 conv=notrunc status=none
    run --separate-stderr kv check "$D"
    [ "$status" -eq 1 ]
    [[ "$output" == *"$name: offset "* ]]
    [[ "$stderr" == "kvfs: $D: "*" found" ]]
}

@test "scan: a value that cannot be read leaves its line (or JSON object) open, not shown as empty" {
    kv put "$D" a 1
    head -c 20000 /dev/urandom | kv put "$D" b
    kv put "$D" c 3
    kv compact "$D"
    blob=$(ls "$D"/*.blob)
    printf '\xde\xad\xbe\xef' | dd of="$blob" bs=1 seek=5000 conv=notrunc status=none
    run --separate-stderr kv scan "$D"
    [ "$status" -eq 1 ]
    [ "$output" = "$(printf 'a\t1\nb\t')" ]
    [[ "$stderr" == "kvfs: scan: 'b': $(basename "$blob"): bad chunk checksum at offset "* ]]
    kv scan "$D" 2>/dev/null | od -An -c | tr -d ' \n' > "$T/od"
    [ "$(cat "$T/od")" = 'a\t1\nb\t' ]
    run --separate-stderr kv scan "$D" --json
    [ "$status" -eq 1 ]
    [ "$output" = "$(printf '[\n{"key":"a","value":"1"},\n{"key":"b"')" ]
    run --separate-stderr kv scan "$D" --keys-only
    [ "$status" -eq 0 ]
}

@test "checkpoint: a copy restored elsewhere opens and matches key for key" {
    fill
    run kv checkpoint "$D" ""
    [ "$status" -eq 2 ]
    kv checkpoint "$D" "$T/cp"
    [ -f "$T/cp/CURRENT" ]
    # table files are hard links (same file system)
    sst=$(ls "$D"/*.sst | head -n 1)
    [ "$(stat -c %h "$sst")" -ge 2 ]
    # writes after the checkpoint do not show in it
    kv put "$D" after x
    # restore: copy the checkpoint somewhere else, as a backup would, and open it there
    cp -a "$T/cp" "$T/restored"
    rm -rf "$T/cp"
    kv scan "$D" --json | json_get '[e for e in d if e["key"] != "after"]' > "$T/orig"
    kv scan "$T/restored" --json | json_get 'd' > "$T/rest"
    cmp "$T/orig" "$T/rest"
    kv get "$T/restored" big | cmp - "$T/blob"
    run kv get "$T/restored" after
    [ "$status" -eq 1 ]
    kv check "$T/restored"
    # the restored store is writable
    kv put "$T/restored" new 1
    # DEST must not exist
    run --separate-stderr kv checkpoint "$D" "$T/restored"
    [ "$status" -eq 1 ]
    [ "$stderr" = "kvfs: checkpoint of $D in $T/restored: $T/restored: already exists" ]
}

# The README's recipe. CURRENT keeps its size from one checkpoint to the next, so rsync's quick check (size and
# mtime) could skip it: it is sent separately with --ignore-times.
backup_ckpt() { # DEST BACKUP
    rsync -a --delete --exclude CURRENT "$1/" "$2/"
    rsync -a --ignore-times "$1/CURRENT" "$2/CURRENT"
}

@test "checkpoint + rsync backup recipe is incremental and restores" {
    command -v rsync >/dev/null || skip "rsync is not installed"
    fill
    kv checkpoint "$D" "$T/cp1"
    backup_ckpt "$T/cp1" "$T/backup"
    rm -rf "$T/cp1"
    kv put "$D" later 2
    kv checkpoint "$D" "$T/cp2"
    out=$(rsync -a --delete --exclude CURRENT --itemize-changes "$T/cp2/" "$T/backup/")
    rsync -a --ignore-times "$T/cp2/CURRENT" "$T/backup/CURRENT"
    # table and blob files already in the backup are not sent again: only new ones ("+++++++++") are
    echo "$out"
    ! grep -E '^>f[^+]{9} .*\.(sst|blob)$' <<<"$out"
    grep -qE '^>f\+{9} .*\.sst$' <<<"$out"
    rm -rf "$T/cp2"
    # restore: copy the backup to a new data directory and open it
    rsync -a "$T/backup/" "$T/restored/"
    [ "$(kv get "$T/restored" later)" = 2 ]
    cmp <(kv scan "$D") <(kv scan "$T/restored")
    kv check "$T/restored"
}

@test "changes --since SEQ replays exactly the batches committed after SEQ" {
    kv put "$D" a 1
    kv put "$D" b 2
    seq=$(kv stats "$D" --json | json_get 'd["last_sequence"]')
    printf 'put c 3\ndel a\n' | kv batch "$D"
    kv del "$D" b
    printf 'x' | kv put "$D" 'sp ace'
    # a sequence the store has not reached is an error, not an empty feed (with --follow it would skip batches)
    last=$((seq + 3))
    for since in $((last + 1)) 18446744073709551615; do
        for follow in "" --follow; do
            run --separate-stderr kv changes "$D" --since "$since" $follow
            [ "$status" -eq 1 ]
            [ "$output" = "" ]
            [ "$stderr" = "kvfs: --since $since is past the last batch of $D, $last (a position from another store, or from before a restore?)" ]
        done
    done
    run kv changes "$D" --since "$seq"
    [ "$status" -eq 0 ]
    got=$(sed -E 's/^(batch [0-9]+) .*/\1/' <<<"$output")
    expect="batch $((seq + 1))
put c 1 3
del a
batch $((seq + 2))
del b
batch $((seq + 3))
put sp%20ace 1 x"
    [ "$got" = "$expect" ]
    # --json: the same batches
    kv changes "$D" --since "$seq" --json | json_ok
    [ "$(kv changes "$D" --since "$seq" --json | json_get '[b["seq"] for b in d]')" = "[$((seq + 1)), $((seq + 2)), $((seq + 3))]" ]
    [ "$(kv changes "$D" --since "$seq" --json | json_get 'd[0]["ops"]')" = '[{"op": "put", "key": "c", "size": 1, "value": "3"}, {"op": "del", "key": "a"}]' ]
    # replaying them onto a copy of the store as it was at SEQ gives the same store
    [ "$(kv changes "$D" --since "$((seq + 3))")" = "" ]
    [ "$(kv changes "$D" --since "$((seq + 3))" --json)" = "[]" ]
    # everything from the start
    [ "$(kv changes "$D" | grep -c '^batch ')" -eq $((seq + 3)) ]
}

@test "changes shows large values by size, and time stamps in UTC" {
    head -c 300000 /dev/urandom | kv put "$D" big
    run kv changes "$D"
    [ "$status" -eq 0 ]
    [[ "${lines[0]}" =~ ^batch\ 1\ [0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$ ]]
    [ "${lines[1]}" = "put big 300000" ]
    [ "$(kv changes "$D" --json | json_get 'd[0]["ops"][0]["external"]')" = True ]
}

@test "prune, and the evicted error naming the oldest retained batch" {
    for i in 1 2 3 4 5 6; do kv put "$D" "k$i" "$i"; done
    kv prune "$D" --before 4
    run kv changes "$D"
    [ "$status" -eq 0 ]
    [ "$(grep -c '^batch ' <<<"$output")" -eq 3 ]
    [[ "${lines[0]}" == "batch 4 "* ]]
    run --separate-stderr kv changes "$D" --since 1
    [ "$status" -eq 1 ]
    [ "$stderr" = "kvfs: batch 2 was evicted from the batch log, oldest retained is 4" ]
    run kv changes "$D" --since 3
    [ "$status" -eq 0 ]
    [ "$(grep -c '^batch ' <<<"$output")" -eq 3 ]
    [ "$(kv stats "$D" --json | json_get 'd["batch_log"]["oldest"]')" -eq 4 ]
}

@test "changes --follow prints new batches as they come, until interrupted" {
    kv put "$D" a 1
    timeout 30 "$KVFS" changes "$D" --since 1 --follow > "$T/follow" 2>"$T/follow.err" 3>&- &
    pid=$!
    sleep 0.5
    kv put "$D" b 2
    printf 'put c 3\ndel b\n' | kv batch "$D"
    for i in $(seq 1 100); do
        [ "$(grep -c '^batch ' "$T/follow")" -ge 2 ] && break
        sleep 0.1
    done
    kill -INT "$pid"
    wait "$pid" && st=0 || st=$?
    [ "$st" -eq 130 ]
    [ "$(sed -E 's/^(batch [0-9]+) .*/\1/' "$T/follow")" = "$(printf 'batch 2\nput b 1 2\nbatch 3\nput c 1 3\ndel b')" ]
    [ ! -s "$T/follow.err" ]
    # the store was left closed and consistent
    kv check "$D"
}

@test "changes --follow fails when the store goes back to an older copy while it follows, rather than skip" {
    # DATADIR is a link, so that the store can be swapped for an older copy of itself in one step (a restore)
    kv put "$T/now" a 1
    kv checkpoint "$T/now" "$T/older"
    kv put "$T/now" b 2
    kv put "$T/now" c 3
    ln -s "$T/now" "$T/link"
    timeout 30 "$KVFS" changes "$T/link" --since 3 --follow > "$T/follow" 2>"$T/follow.err" 3>&- &
    pid=$!
    sleep 0.5
    ln -s "$T/older" "$T/link.new"
    mv -T "$T/link.new" "$T/link"
    # the restored store's batches 2 and 3 are not the ones the feed went past: it must fail, not wait for batch 4
    # and go on from there (its next poll sees the store at batch 2, behind the feed)
    kv put "$T/link" x 2
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -INT "$pid" 2>/dev/null || true
    wait "$pid" && st=0 || st=$?
    [ "$st" -eq 1 ]
    [ ! -s "$T/follow" ]
    # at batch 1 or 2, as the put and the poll fall
    [[ "$(cat "$T/follow.err")" =~ ^"kvfs: $T/link went back from batch 3 to "[12]" while it was followed (restored from an older copy?)"$ ]]
}

@test "changes --follow --json prints one JSON object a line" {
    kv put "$D" a 1
    timeout 30 "$KVFS" changes "$D" --follow --json > "$T/follow" 3>&- &
    pid=$!
    sleep 0.3
    kv put "$D" b 2
    for i in $(seq 1 100); do
        [ "$(wc -l < "$T/follow")" -ge 2 ] && break
        sleep 0.1
    done
    kill -INT "$pid"
    wait "$pid" || true
    [ "$(wc -l < "$T/follow")" -eq 2 ]
    while read -r line; do json_ok <<<"$line"; done < "$T/follow"
}

@test "dump: WAL, SSTable, manifest, batch log, blob file, CURRENT" {
    kv put "$D" 'dump%0Ame' hello
    head -c 200000 /dev/urandom | kv put "$D" big
    kv compact "$D"
    kv put "$D" inwal x
    sst=$(ls "$D"/*.sst | head -n 1)
    run kv dump "$sst"
    [ "$status" -eq 0 ]
    [[ "${lines[0]}" == "$(basename "$sst"): SSTable"* ]]
    [[ "$output" == *'put ks0 dump%0Ame @1 '*'= 5 bytes "hello"'* ]]
    [[ "$output" == *'put ks0 big @2 '*'blob of 200000 bytes'* ]]
    log=$(ls "$D"/*.log | tail -n 1)
    run kv dump "$log"
    [ "$status" -eq 0 ]
    [[ "$output" == *"record log of batches"* ]]
    run kv dump "$D/$(cat "$D/CURRENT")"
    [ "$status" -eq 0 ]
    [[ "$output" == *"manifest"* ]]
    [[ "$output" == *"add L"*".sst"* ]]
    bl=$(ls "$D"/BATCHLOG-* | head -n 1)
    run kv dump "$bl"
    [ "$status" -eq 0 ]
    [[ "$output" == *"batch 1 "* ]]
    blob=$(ls "$D"/*.blob | head -n 1)
    run kv dump "$blob"
    [ "$status" -eq 0 ]
    [[ "$output" == *"200000 bytes in 4 chunks"* ]]
    run kv dump "$D/CURRENT"
    [ "$status" -eq 0 ]
    [[ "$output" == "CURRENT: the live manifest is MANIFEST-"* ]]
}

@test "dump: errors for a damaged file (with offset), an unknown file, a missing file" {
    kv put "$D" a 1
    kv put "$D" b 2
    bl=$(ls "$D"/BATCHLOG-* | head -n 1)
    cp "$bl" "$T/BATCHLOG-000099"
    # damage the first record's payload; a second record follows, so this is corruption, not a torn tail
    printf 'put c 3\n' | kv batch "$D"
    cat "$(ls "$D"/BATCHLOG-* | tail -n 1)" >> "$T/BATCHLOG-000099"
    printf '\xff' | dd of="$T/BATCHLOG-000099" bs=1 seek=12 conv=notrunc status=none
    run --separate-stderr kv dump "$T/BATCHLOG-000099"
    [ "$status" -eq 1 ]
    [[ "$stderr" == "kvfs: $T/BATCHLOG-000099: "*"offset 0"* ]]
    echo hi > "$T/whatever.txt"
    run --separate-stderr kv dump "$T/whatever.txt"
    [ "$status" -eq 1 ]
    [[ "$stderr" == "kvfs: $T/whatever.txt: unknown kind of file"* ]]
    run --separate-stderr kv dump "$T/nope.sst"
    [ "$status" -eq 1 ]
    [ "$stderr" = "kvfs: $T/nope.sst: no such file" ]
}

@test "changes and dump: a damaged batch timestamp far before 1970 is shown floored, without overflow" {
    # Timestamps are varints cast to int64, so bad bytes with a valid checksum can hold any value. Batch 1's is -1 ms,
    # batch 2's INT64_MIN (ms - 999 overflowed there: UBSan with KVFS=build-san/kvfs; dump printed ".-01Z").
    # both batches go to one file: an open continues the newest batch-log file when it ended cleanly
    kv put "$D" a 1
    kv put "$D" b 2
    [ -f "$D/BATCHLOG-000001" ] && [ ! -e "$D/BATCHLOG-000002" ]
    printf '\xfd\x59\x1e\x71\x19\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01\x01\x01\x02\x00\x61\x01\x31' > "$D/BATCHLOG-000001"
    printf '\xa4\x4f\x29\xfe\x19\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01\x01\x01\x02\x00\x62\x01\x32' > "$D/BATCHLOG-000002"
    run --separate-stderr kv changes "$D"
    [ "$status" -eq 0 ]
    [ "${lines[0]}" = "batch 1 1969-12-31T23:59:59.999Z" ]
    [ "${lines[2]}" = "batch 2 -292275055-05-16T16:47:04.192Z" ]
    [ -z "$stderr" ]
    run kv changes "$D" --json
    [ "$status" -eq 0 ]
    [[ "$output" == *'"time_ms":-9223372036854775808,"time":"-292275055-05-16T16:47:04.192Z"'* ]]
    run --separate-stderr kv dump "$D/BATCHLOG-000001"
    [ "$status" -eq 0 ]
    [[ "$output" == *"batch 1 1969-12-31T23:59:59.999Z, 1 op"* ]]
    run --separate-stderr kv dump "$D/BATCHLOG-000002"
    [ "$status" -eq 0 ]
    [[ "$output" == *"batch 2 -292275055-05-16T16:47:04.192Z, 1 op"* ]]
    [ -z "$stderr" ]
}

@test "check: a table whose manifest key range is not its own is reported (get would miss its keys)" {
    command -v python3 >/dev/null 2>&1 || skip "python3 is needed to write a manifest record"
    printf 'put a 1\nput m 2\nput z 3\n' | kv batch "$D"
    kv compact "$D"
    sst=$(ls "$D"/*.sst)
    [ "$(echo "$sst" | wc -l)" -eq 1 ]
    level=$(kv dump "$D/$(cat "$D/CURRENT")" | sed -n "s/^  add L\([0-6]\) $(basename "$sst"):.*/\1/p" | tail -n 1)
    [ -n "$level" ]
    # Append a manifest edit (a valid record) that moves the table to the same place with the range "x" .. "y".
    python3 - "$D/$(cat "$D/CURRENT")" "$level" "$(basename "$sst" .sst)" "$(stat -c %s "$sst")" <<'PY'
import ctypes, ctypes.util, struct, sys
x = ctypes.CDLL(ctypes.util.find_library("xxhash") or "libxxhash.so.0")
x.XXH3_64bits.restype = ctypes.c_uint64
x.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
def v(n):
    o = bytearray()
    while n >= 0x80: o.append(n & 0x7f | 0x80); n >>= 7
    return bytes(o + bytes([n]))
def ik(k): return v(10) + b"\0" + k + struct.pack("<Q", 1 << 8 | 1)
path, level, no, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
edit = v(5) + v(level) + v(no) + v(4) + v(level) + v(no) + v(size) + v(3) + v(0) + v(1) + v(3) + ik(b"x") + ik(b"y")
hdr = struct.pack("<I", len(edit))
open(path, "ab").write(struct.pack("<I", x.XXH3_64bits(hdr + edit, len(hdr + edit)) & 0xffffffff) + hdr + edit)
PY
    run kv get "$D" m
    [ "$status" -eq 1 ] # the damage: reads skip the table
    run --separate-stderr kv check "$D"
    [ "$status" -eq 1 ]
    [[ "$output" == *"$(basename "$sst"): offset 0: key range differs from the manifest"* ]]
    [[ "$stderr" == "kvfs: $D: 1 problem found" ]]
}

@test "progress bar on a terminal only" {
    command -v script >/dev/null || skip "script(1) is not installed"
    fill
    for i in $(seq 1 20); do head -c 100000 /dev/urandom | kv put "$D" "blob$i"; done
    # on a terminal: a bar drawn with carriage returns, then erased
    script -qec "'$KVFS' check '$D'" /dev/null > "$T/tty.out" < /dev/null
    grep -q $'\r''check \[' "$T/tty.out"
    grep -q 'no problems found' "$T/tty.out"
    # piped: nothing on stderr
    run --separate-stderr kv check "$D"
    [ "$status" -eq 0 ]
    [ -z "$stderr" ]
}
