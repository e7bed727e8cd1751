#!/usr/bin/env bats
# tools_socket.bats — the tools on a store held open by a daemon, through its control socket. The daemon here is
# `kvfs serve` (the socket without FUSE), so this runs on machines without FUSE too; tools_mounted.bats does the
# same through a real `kvfs mount`.

load helpers.bash-tools

setup() {
    tools_setup
    SERVE_PID=""
}

teardown() {
    stop_serve
    tools_teardown
}

# Start `kvfs serve` in the background. SERVE_PID is the kvfs process itself (not a wrapper), so that tests can
# signal it; fd 3 is closed so that bats never waits for it.
start_serve() {
    mkdir -p "$D"
    "$KVFS" serve "$D" 2>"$T/serve.err" 3>&- &
    SERVE_PID=$!
    local i
    for i in $(seq 1 100); do
        [ -S "$D/kvfs.sock" ] && return 0
        kill -0 "$SERVE_PID" 2>/dev/null || break
        sleep 0.05
    done
    cat "$T/serve.err" >&2
    return 1
}

# Stop it with SIGINT, as a user would; kill it if it has not ended 10 seconds later.
stop_serve() {
    [ -n "$SERVE_PID" ] || return 0
    kill -INT "$SERVE_PID" 2>/dev/null || true
    local i
    for i in $(seq 1 200); do
        kill -0 "$SERVE_PID" 2>/dev/null || break
        sleep 0.05
    done
    kill -9 "$SERVE_PID" 2>/dev/null || true
    wait "$SERVE_PID" 2>/dev/null || true
    SERVE_PID=""
}

@test "the socket is owner-only and removed when the daemon stops" {
    kv put "$D" a 1
    start_serve
    [ "$(stat -c %a "$D/kvfs.sock")" = 600 ]
    [ "$(stat -c %u "$D/kvfs.sock")" = "$(id -u)" ]
    [ "$(kv get "$D" a)" = 1 ]
    stop_serve
    [ ! -e "$D/kvfs.sock" ]
    [ ! -s "$T/serve.err" ]
}

@test "every command gives the same output through the daemon as directly" {
    printf 'put a 1\nput b%%0A two\nput c/d 3\nput c/e 4\n' | kv batch "$D"
    head -c 100000 /dev/urandom > "$T/blob"
    kv put "$D" blob < "$T/blob"
    cmds=(
        "get|$D|c/d"
        "get|$D|blob"
        "scan|$D"
        "scan|$D|--json"
        "scan|$D|--prefix|c/|--reverse"
        "scan|$D|--start|b|--end|c/d|--keys-only"
        "resolve|$D|c/e"
        "short|$D|c/d"
        "changes|$D"
        "changes|$D|--since|2|--json"
        "check|$D"
        "get|$D|missing"
        "resolve|$D|c"
    )
    run_all() { # OUTDIR
        local i=0 c
        mkdir -p "$1"
        for c in "${cmds[@]}"; do
            IFS='|' read -r -a argv <<<"$c"
            kv "${argv[@]}" > "$1/$i.out" 2> "$1/$i.err" && echo 0 > "$1/$i.rc" || echo $? > "$1/$i.rc"
            i=$((i + 1))
        done
    }
    start_serve
    run_all "$T/remote"
    # the daemon really served them: the store stayed locked by it all along
    [ -S "$D/kvfs.sock" ]
    stop_serve
    run_all "$T/direct"
    diff -r "$T/remote" "$T/direct"
    [ "$(cat "$T/direct/11.rc")" = 1 ]
}

@test "writes through the daemon: put (argument, stdin, large), del, batch, compact, checkpoint, prune" {
    kv put "$D" seed 0
    start_serve
    kv put "$D" a 1
    printf 'piped' | kv put "$D" p
    head -c $((3 * 1024 * 1024 + 5)) /dev/urandom > "$T/big"
    kv put "$D" big < "$T/big"
    printf 'put x 1\nput y 2\ndel a\n' | kv batch "$D"
    kv del "$D" y
    kv compact "$D"
    # a relative DEST is relative to the client's directory, not the daemon's
    (cd "$T" && kv checkpoint "$D" cp)
    [ -f "$T/cp/CURRENT" ]
    kv prune "$D" --before 3
    [ "$(kv get "$D" p)" = piped ]
    kv get "$D" big | cmp - "$T/big"
    [ "$(kv scan "$D" --keys-only | tr '\n' ' ')" = "big p seed x " ]
    run --separate-stderr kv changes "$D" --since 1
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"oldest retained is 3" ]]
    stop_serve
    [ "$(kv scan "$T/cp" --keys-only | tr '\n' ' ')" = "big p seed x " ]
    kv get "$D" big | cmp - "$T/big"
}

@test "serve waits for a process that has the store open for a moment, as mount does; a bad KVFS_LOCK_WAIT is an error" {
    kv put "$D" a 1
    # A put reading a FIFO holds the store open until its writer closes it.
    mkfifo "$T/fifo"
    "$KVFS" put "$D" held < "$T/fifo" 3>&- &
    local putpid=$!
    exec 4>"$T/fifo"
    sleep 0.3
    ( sleep 1; printf 'v' >&4; exec 4>&- ) 3>&- &
    exec 4>&-
    start_serve # failed at once before: "the store is in use by another process"
    wait "$putpid"
    [ "$(kv get "$D" held)" = v ]
    run --separate-stderr env KVFS_LOCK_WAIT=x "$KVFS" serve "$D"
    [ "$status" -eq 1 ]
    [ "$stderr" = "kvfs: KVFS_LOCK_WAIT=x: not a number of seconds from 0 to 86400" ]
}

@test "a data directory whose socket path is too long for sun_path still works" {
    D="$T/$(printf 'x%.0s' $(seq 1 60))/$(printf 'y%.0s' $(seq 1 60))/data"
    mkdir -p "$(dirname "$D")"
    kv put "$D" a 1
    start_serve
    [ "${#D}" -gt 108 ]
    [ "$(kv get "$D" a)" = 1 ]
    kv put "$D" b 2
    [ "$(kv scan "$D" --keys-only | tr '\n' ' ')" = "a b " ]
}

@test "usage errors are found by the client, with status 2, before reaching the daemon" {
    kv put "$D" a 1
    start_serve
    run --separate-stderr kv scan "$D" --frob
    [ "$status" -eq 2 ]
    [[ "$stderr" == "kvfs: scan: unknown option '--frob'"* ]]
    run --separate-stderr kv get "$D" 'x%4'
    [ "$status" -eq 2 ]
}

@test "checkpoint with an empty DEST is a usage error through the daemon too, not the working directory" {
    kv put "$D" a 1
    run --separate-stderr kv checkpoint "$D" ''
    [ "$status" -eq 2 ]
    [ "$stderr" = "kvfs: checkpoint: empty DEST (usage: kvfs checkpoint DATADIR DEST)" ]
    start_serve
    cd "$T"
    run --separate-stderr kv checkpoint "$D" ''
    [ "$status" -eq 2 ]
    [ "$stderr" = "kvfs: checkpoint: empty DEST (usage: kvfs checkpoint DATADIR DEST)" ]
}

@test "del with more than 65536 keys works through the daemon as it does directly" {
    seq 1 70000 | sed 's/.*/put n& x/' | kv batch "$D"
    start_serve
    # shellcheck disable=SC2046
    run --separate-stderr kv del "$D" $(seq 1 70000 | sed 's/^/n/')
    [ "$status" -eq 0 ]
    [ "$stderr" = "" ]
    run kv scan "$D" --keys-only
    [ "$status" -eq 0 ]
    [ "$output" = "" ]
}

@test "changes --follow through the daemon; interrupting the client stops it in the daemon" {
    kv put "$D" a 1
    start_serve
    timeout 30 "$KVFS" changes "$D" --since 1 --follow > "$T/follow" 3>&- &
    pid=$!
    sleep 0.3
    kv put "$D" b 2
    for i in $(seq 1 100); do
        grep -q '^put b' "$T/follow" && break
        sleep 0.1
    done
    kill -INT "$pid"
    wait "$pid" || true
    [ "$(sed -E 's/^(batch [0-9]+) .*/\1/' "$T/follow")" = "$(printf 'batch 2\nput b 1 2')" ]
    # the daemon is still healthy, and stops promptly (no command left running in it)
    [ "$(kv get "$D" b)" = 2 ]
    SECONDS=0
    stop_serve
    [ "$SECONDS" -le 3 ]
}

@test "interrupting a put that streams stdin through the daemon writes nothing" {
    kv put "$D" a 1
    start_serve
    mkfifo "$T/fifo"
    timeout 20 "$KVFS" put "$D" partial < "$T/fifo" 3>&- &
    pid=$!
    exec 7>"$T/fifo"
    head -c 100000 /dev/zero >&7
    sleep 0.3
    kill -INT "$pid"
    wait "$pid" || true
    sleep 0.3
    exec 7>&-
    run kv get "$D" partial
    [ "$status" -eq 1 ]
    [ "$(kv get "$D" a)" = 1 ]
}

@test "a reader that goes away (scan | head) ends the command in the daemon" {
    seq 1 100000 | sed 's/^/put k/; s/$/ v/' | kv batch "$D"
    start_serve
    run bash -c "'$KVFS' scan '$D' --keys-only | head -n 2"
    [ "$status" -eq 0 ]
    [ "$output" = "$(printf 'k1\nk10')" ]
    [ "$(kv get "$D" k5)" = v ]
    SECONDS=0
    stop_serve
    [ "$SECONDS" -le 3 ]
}

@test "a client killed while its reader stops reading (get | sleep) frees the daemon's thread; the daemon stops" {
    # The daemon writes into the client's pipe: a blocking write() into a full pipe waited for the reader, whoever
    # had gone, and the daemon's stop (an unmount) waited for that command for as long as the reader slept.
    head -c 2000000 /dev/zero | kv put "$D" big
    start_serve
    mkfifo "$T/out"
    sleep 60 < "$T/out" 3>&- &
    local sleeper=$!
    "$KVFS" get "$D" big > "$T/out" 3>&- &
    local pid=$!
    sleep 0.5
    kill -9 "$pid"
    wait "$pid" || true
    run kv get "$D" missing
    [ "$status" -eq 1 ] && [ "$output" = "kvfs: key 'missing' not found" ]
    SECONDS=0
    stop_serve
    local took=$SECONDS
    kill "$sleeper" 2>/dev/null || true
    wait "$sleeper" 2>/dev/null || true
    [ "$took" -le 3 ]
    [ ! -e "$D/kvfs.sock" ]
}

@test "a daemon already serving 256 commands says so; it is not a silent status 1 (get's 'not found')" {
    command -v python3 >/dev/null 2>&1 || skip "python3 is needed to hold connections open"
    kv put "$D" a 1
    start_serve
    # 256 connections that send nothing: each holds one of the daemon's slots for 10 seconds
    python3 -c 'import socket,sys,time
ss=[socket.socket(socket.AF_UNIX) for i in range(256)]
for s in ss: s.connect(sys.argv[1])
print("held", flush=True); time.sleep(8)' "$D/kvfs.sock" > "$T/held" 3>&- &
    local holder=$!
    for i in $(seq 1 100); do grep -q held "$T/held" && break; sleep 0.05; done
    sleep 0.2
    run kv get "$D" a
    kill "$holder" 2>/dev/null || true
    wait "$holder" 2>/dev/null || true
    [ "$status" -eq 1 ]
    [[ "$output" == *"busy"* ]]
    [ "$(kv get "$D" a)" = 1 ]
}

@test "a write through the daemon that faults in the log's mapping does not end the daemon" {
    # A log cut by another process: the daemon's next write into its reserved space lands in a mapped page past the
    # end of the file (SIGBUS). The engine's handler turns that into a pwrite, but only on a thread where SIGBUS is
    # not blocked: blocked, the kernel kills the process. Commands run on the control socket's threads.
    kv put "$D" a 1
    start_serve
    kv put "$D" b 2
    local log
    log="$(ls "$D"/*.log | sort | tail -n 1)"
    truncate -s 0 "$log"
    kv put "$D" c 3
    kill -0 "$SERVE_PID"
    [ "$(kv get "$D" c)" = 3 ]
    stop_serve
}

@test "a stale socket (daemon killed) does not get in the way, and is replaced by the next daemon" {
    kv put "$D" a 1
    start_serve
    kill -9 "$SERVE_PID"
    wait "$SERVE_PID" 2>/dev/null || true
    SERVE_PID=""
    [ -S "$D/kvfs.sock" ]
    # the lock died with the daemon: tools open the store directly
    [ "$(kv get "$D" a)" = 1 ]
    start_serve
    [ "$(kv get "$D" a)" = 1 ]
}

@test "a second daemon on the same store is refused; a non-socket kvfs.sock is never removed" {
    kv put "$D" a 1
    start_serve
    run --separate-stderr timeout 10 "$KVFS" serve "$D"
    [ "$status" -eq 1 ]
    [ "$stderr" = "kvfs: $D: the store is already served by a daemon (kvfs mount or kvfs serve)" ]
    stop_serve
    echo precious > "$D/kvfs.sock"
    run --separate-stderr timeout 10 "$KVFS" serve "$D"
    [ "$status" -eq 1 ]
    [[ "$stderr" == "kvfs: $D: $D/kvfs.sock exists and is not a socket" ]]
    [ "$(cat "$D/kvfs.sock")" = precious ]
}

@test "the daemon refuses clients of another user (SO_PEERCRED)" {
    [ "$(id -u)" -eq 0 ] || skip "needs root to run a client as another user"
    command -v setpriv >/dev/null || skip "setpriv is not installed"
    kv put "$D" secret s3cret
    start_serve
    # open the way so that only the credential check stands between the other user and the store
    chmod 0755 "$T" "$D"
    chmod 0666 "$D/kvfs.sock" "$D/LOCK"
    run --separate-stderr timeout 20 setpriv --reuid=65534 --regid=65534 --clear-groups env KVFS_LOCK_WAIT=0 "$KVFS" get "$D" secret
    [ "$status" -eq 1 ]
    [ "$output" = "" ]
    [ "$stderr" = "kvfs: $D: the mount daemon refused the request (it runs as another user)" ]
}

@test "a command started while the daemon stops waits for the store and runs, instead of failing in the daemon's queue" {
    mkdir -p "$T/mnt"
    mount_store "$D" "$T/mnt"
    # enough data that a compaction through the daemon runs for a while: the unmount waits for it
    python3 -c 'import os,sys; [sys.stdout.write("put k%06d %s\n" % (i, os.urandom(500).hex())) for i in range(100000)]' |
        kv batch "$D"
    "$KVFS" compact "$D" 3>&- &
    compact=$!
    sleep 0.3
    fusermount3 -u "$T/mnt" &
    umount_pid=$!
    sleep 0.2
    # the daemon is stopping: its socket must not take this command only to drop it
    run --separate-stderr env KVFS_LOCK_WAIT=60 "$KVFS" put "$D" after 1
    echo "$stderr"
    [ "$status" -eq 0 ]
    wait "$umount_pid"
    wait "$compact" || true
    [ "$(kv get "$D" after)" = 1 ]
}

@test "kvfs serve gets a store that read-only commands keep overlapping on: a waiting writer goes first" {
    kv put "$D" a 1
    readers_overlap
    # before, it never got the store (the readers' shared lock never came free): start_serve gave up
    KVFS_LOCK_WAIT=10 start_serve
    [ "$(kv get "$D" a)" = 1 ]
    rm "$T/run"
    wait "$READERS"
    kv put "$D" b 2 # through the daemon
    stop_serve
    [ "$(kv get "$D" b)" = 2 ]
    [ ! -s "$T/serve.err" ]
}

@test "changes --follow cut short by its daemon's stop goes on where it got: in the next daemon, then directly" {
    start_serve
    export KVFS_LOCK_WAIT=60
    follow_stalled # the daemon has filled the pipe in the middle of the batch, and waits for room
    # the client, stopped, hears of the daemon's stop only once another daemon serves the store: it goes on there,
    # the new daemon printing the rest of the batch
    pid=$(pgrep -P "$FOLLOW_PID")
    kill -STOP "$pid"
    kill -INT "$SERVE_PID"
    wait "$SERVE_PID"
    start_serve
    kill -CONT "$pid"
    follow_read
    follow_put_and_check served
    # that daemon stops too: the client reads the store itself
    kill -INT "$SERVE_PID"
    wait "$SERVE_PID"
    SERVE_PID=""
    follow_put_and_check direct
    follow_end
    # --skip-bytes is the client's word to its daemon, not an option of the command line
    run --separate-stderr kv changes "$D" --skip-bytes 5
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"unknown option '--skip-bytes'"* ]]
}
