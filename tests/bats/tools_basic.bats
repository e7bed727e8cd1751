#!/usr/bin/env bats
# tools_basic.bats — the kvfs key commands on a store that is not mounted: put, get, del, batch, scan, resolve,
# short; help, version, usage errors and the text form of keys.

load helpers.bash-tools

setup() { tools_setup; }
teardown() { tools_teardown; }

@test "--version, --help and COMMAND --help" {
    run kv --version
    [ "$status" -eq 0 ]
    [[ "$output" =~ ^kvfs\ [0-9]+\.[0-9]+\.[0-9]+$ ]]
    run kv --help
    [ "$status" -eq 0 ]
    for c in mount put get del batch scan resolve short stats compact check checkpoint changes prune dump; do
        [[ "$output" == *"  $c "* ]] || { echo "missing $c"; false; }
    done
    run kv scan --help
    [ "$status" -eq 0 ]
    [[ "$output" == "usage: kvfs scan DATADIR"* ]]
    [[ "$output" == *"--keys-only"* ]]
    run kv help batch
    [ "$status" -eq 0 ]
    [[ "$output" == *"put KEY VALUE"* ]]
}

@test "--version and the help texts fail with a kvfs: line when stdout cannot be written" {
    [ -w /dev/full ] || skip "no /dev/full"
    local args
    for args in --version --help "help scan" "scan --help" "help mount" "mount --help" "serve --help"; do
        # shellcheck disable=SC2086
        run --separate-stderr kv $args
        [ "$status" -eq 0 ]
        [ -n "$output" ]
        run --separate-stderr bash -c "exec \"\$0\" $args >/dev/full" "$KVFS"
        [ "$status" -eq 1 ] || { echo "kvfs $args: status $status"; false; }
        [ "$stderr" = "kvfs: writing output: No space left on device" ]
    done
}

@test "usage errors exit 2 with one kvfs: line" {
    run --separate-stderr kv
    [ "$status" -eq 2 ]
    run --separate-stderr kv frobnicate
    [ "$status" -eq 2 ]
    [ "$stderr" = "kvfs: unknown command 'frobnicate' (see kvfs --help)" ]
    run --separate-stderr kv get "$D"
    [ "$status" -eq 2 ]
    [[ "$stderr" == "kvfs: get: missing arguments"* ]]
    run --separate-stderr kv get "$D" a b
    [ "$status" -eq 2 ]
    run --separate-stderr kv scan "$D" --bogus
    [ "$status" -eq 2 ]
    [[ "$stderr" == "kvfs: scan: unknown option '--bogus'"* ]]
    run --separate-stderr kv scan "$D" --limit x
    [ "$status" -eq 2 ]
    run --separate-stderr kv scan "$D" --prefix a --start b
    [ "$status" -eq 2 ]
    run --separate-stderr kv prune "$D"
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"--before SEQ is required"* ]]
    run --separate-stderr kv get "$D" ''
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"empty key"* ]]
    # a compact range that names no key (it used to compact nothing and exit 0)
    run --separate-stderr kv compact "$D" --start z --end a
    [ "$status" -eq 2 ]
    [[ "$stderr" == "kvfs: compact: --start is after --end"* ]]
    run --separate-stderr kv serve --frob
    [ "$status" -eq 2 ]
    [[ "$stderr" == "kvfs: serve: unknown option '--frob'"* ]] # it said "bad arguments"
    run --separate-stderr kv serve "$D" extra
    [ "$status" -eq 2 ]
    [[ "$stderr" == "kvfs: serve: too many arguments"* ]]
    # every error is exactly one line
    [ "$(printf '%s\n' "$stderr" | wc -l)" -eq 1 ]
    # nothing was created by usage errors
    [ ! -e "$D" ]
}

@test "bad escape in a key is a usage error naming the key" {
    run --separate-stderr kv get "$D" 'ab%4g'
    [ "$status" -eq 2 ]
    [[ "$stderr" == "kvfs: get: bad escape in key 'ab%4g' at byte 2"* ]]
    run --separate-stderr kv put "$D" '%+x' v
    [ "$status" -eq 2 ]
}

@test "missing store: one error line, exit 1, nothing created" {
    run --separate-stderr kv get "$T/nowhere" k
    [ "$status" -eq 1 ]
    [[ "$stderr" == "kvfs: $T/nowhere: no store here"* ]]
    [ ! -e "$T/nowhere" ]
    mkdir "$T/empty"
    run --separate-stderr kv scan "$T/empty"
    [ "$status" -eq 1 ]
    [[ "$stderr" == "kvfs: $T/empty: no store here"* ]]
    touch "$T/file"
    run --separate-stderr kv get "$T/file" k
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"not a directory"* ]]
}

@test "put and get: argument, stdin, -, empty value, binary" {
    kv put "$D" users/alice/email alice@example.com
    [ "$(stat -c %a "$D")" = 700 ]
    run kv get "$D" users/alice/email
    [ "$status" -eq 0 ]
    [ "$output" = alice@example.com ]
    printf 'from stdin' | kv put "$D" s
    [ "$(kv get "$D" s)" = "from stdin" ]
    printf 'dash' | kv put "$D" s2 -
    [ "$(kv get "$D" s2)" = dash ]
    kv put "$D" empty ''
    kv get "$D" empty > "$T/e"
    [ ! -s "$T/e" ]
    head -c 4096 /dev/urandom > "$T/bin"
    kv put "$D" bin < "$T/bin"
    kv get "$D" bin > "$T/bin.out"
    cmp "$T/bin" "$T/bin.out"
    # overwrite
    kv put "$D" s new
    [ "$(kv get "$D" s)" = new ]
}

@test "get of an absent key: exit 1 and a message" {
    kv put "$D" a 1
    run --separate-stderr kv get "$D" b
    [ "$status" -eq 1 ]
    [ "$output" = "" ]
    [ "$stderr" = "kvfs: key 'b' not found" ]
}

@test "a closed stdin or stdout fails as a closed descriptor: put stores nothing, get and scan do not say 0" {
    kv put "$D" a 1
    run --separate-stderr bash -c 'exec "$0" put "$1" k <&-' "$KVFS" "$D"
    [ "$status" -eq 1 ]
    [ "$stderr" = "kvfs: put: reading stdin: Bad file descriptor" ]
    run --separate-stderr kv get "$D" k
    [ "$status" -eq 1 ]
    run --separate-stderr bash -c 'exec "$0" batch "$1" <&-' "$KVFS" "$D"
    [ "$status" -eq 1 ]
    [ "$stderr" = "kvfs: batch: reading stdin: Bad file descriptor" ]
    local args
    for args in "get $D a" "scan $D" "stats $D" --version; do
        # shellcheck disable=SC2086
        run --separate-stderr bash -c "exec \"\$0\" $args >&-" "$KVFS"
        [ "$status" -eq 1 ] || { echo "kvfs $args: status $status"; false; }
        [ "$stderr" = "kvfs: writing output: Bad file descriptor" ]
    done
    # a command that reads and writes neither is unaffected; the store is intact
    bash -c 'exec "$0" put "$1" b 2 <&- >&-' "$KVFS" "$D"
    [ "$(kv get "$D" b)" = 2 ]
    kv check "$D"
}

@test "changes --follow ends as killed by SIGPIPE once its reader is gone, without waiting for a batch" {
    follow_ends_when_reader_leaves
}

@test "large value streamed through put and get (binary-safe, bigger than a chunk)" {
    head -c $((9 * 1024 * 1024 + 123)) /dev/urandom > "$T/big"
    kv put "$D" big < "$T/big"
    kv get "$D" big > "$T/big.out"
    cmp "$T/big" "$T/big.out"
    # a value above the blob threshold but in one chunk
    head -c 300000 /dev/urandom > "$T/mid"
    kv put "$D" mid < "$T/mid"
    cmp "$T/mid" <(kv get "$D" mid)
}

@test "keys that are not printable round-trip through their escaped text form" {
    kv put "$D" 'a%00b' nul
    kv put "$D" 'new%0Aline' nl
    kv put "$D" 'sp ace' sp
    kv put "$D" 'pct%25' pc
    kv put "$D" '100%' lit
    kv put "$D" 'caf%C3%A9' utf
    kv put "$D" 'x%FFy' ff
    kv put "$D" 'a//b' dbl
    kv put "$D" '%2E%2E' dotdot
    run kv scan "$D" --keys-only
    [ "$status" -eq 0 ]
    [ "$output" = "$(printf '%s\n' '%2E%2E' '100%' 'a%00b' 'a/%/b' 'café' 'new%0Aline' 'pct%' 'sp%20ace' 'x%FFy')" ]
    # every printed key reads back, with the value that was put
    [ "$(kv get "$D" 'a%00b')" = nul ]
    [ "$(kv get "$D" 'sp%20ace')" = sp ]
    [ "$(kv get "$D" 'café')" = utf ]
    [ "$(kv get "$D" 'a/%/b')" = dbl ]
    [ "$(kv get "$D" '..')" = dotdot ]
    [ "$(kv get "$D" '100%')" = lit ]
    [ "$(kv get "$D" 'pct%25')" = pc ]
    [ "$(kv get "$D" 'pct%')" = pc ]
}

@test "del: several keys in one batch; absent keys are fine" {
    kv put "$D" a 1
    kv put "$D" b 2
    kv put "$D" c 3
    seq_before=$(kv stats "$D" --json | json_get 'd["last_sequence"]')
    kv del "$D" a b zzz
    [ "$(kv scan "$D" --keys-only)" = c ]
    seq_after=$(kv stats "$D" --json | json_get 'd["last_sequence"]')
    [ "$seq_after" -eq $((seq_before + 1)) ]
    run kv get "$D" a
    [ "$status" -eq 1 ]
    # a key starting with '-' goes after --
    kv put "$D" -- -dash v
    [ "$(kv get "$D" -- -dash)" = v ]
    kv del "$D" -- -dash
    run kv get "$D" -- -dash
    [ "$status" -eq 1 ]
}

@test "batch: puts and deletes applied atomically from stdin" {
    kv put "$D" old 1
    printf '%s\n' '# a comment' '' 'put k1 v1' 'put k2 hello world%0A' 'put empty' 'del old' 'put sp%20key x' |
        kv batch "$D"
    [ "$(kv get "$D" k1)" = v1 ]
    [ "$(kv get "$D" k2 | od -An -c | tr -s ' ')" = "$(printf 'hello world\n' | od -An -c | tr -s ' ')" ]
    [ "$(kv get "$D" empty | wc -c)" -eq 0 ]
    [ "$(kv get "$D" 'sp key')" = x ]
    run kv get "$D" old
    [ "$status" -eq 1 ]
    # one batch: one sequence number for all of it
    [ "$(kv changes "$D" --since 1 | grep -c '^batch ')" -eq 1 ]
}

@test "batch: a bad line applies nothing and names the line" {
    kv put "$D" keep 1
    run --separate-stderr kv batch "$D" <<<"$(printf '%s\n' 'put a 1' 'del keep' 'frob x' 'put b 2')"
    [ "$status" -eq 1 ]
    [ "$stderr" = "kvfs: batch: line 3: unknown operation 'frob' (expected put or del)" ]
    # a binary file given as input: the operation is shown in text form, no raw control bytes on the terminal
    run --separate-stderr kv batch "$D" < <(printf 'put a 1\n\033[31mred\001 x y\n')
    [ "$status" -eq 1 ]
    [ "$stderr" = "kvfs: batch: line 2: unknown operation '%1B[31mred%01' (expected put or del)" ]
    run kv get "$D" a
    [ "$status" -eq 1 ]
    [ "$(kv get "$D" keep)" = 1 ]
    run --separate-stderr kv batch "$D" <<<"put k%4x v"
    [ "$status" -eq 1 ]
    [[ "$stderr" == "kvfs: batch: line 1: bad escape in key"* ]]
    run --separate-stderr kv batch "$D" <<<"del a b"
    [ "$status" -eq 1 ]
    run --separate-stderr kv batch "$D" <<<"put"
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"line 1: missing key"* ]]
}

@test "scan: order, --start/--end inclusive, --prefix, --limit, --reverse, --keys-only" {
    for k in a b ba bb bc c d; do printf 'put %s v%s\n' "$k" "$k"; done | kv batch "$D"
    [ "$(kv scan "$D" --keys-only | tr '\n' ' ')" = "a b ba bb bc c d " ]
    [ "$(kv scan "$D" --start b --end c --keys-only | tr '\n' ' ')" = "b ba bb bc c " ]
    [ "$(kv scan "$D" --start bb --keys-only | tr '\n' ' ')" = "bb bc c d " ]
    [ "$(kv scan "$D" --end b --keys-only | tr '\n' ' ')" = "a b " ]
    [ "$(kv scan "$D" --prefix b --keys-only | tr '\n' ' ')" = "b ba bb bc " ]
    [ "$(kv scan "$D" --prefix b --end bb --keys-only | tr '\n' ' ')" = "b ba bb " ]
    [ "$(kv scan "$D" --prefix b --reverse --keys-only | tr '\n' ' ')" = "bc bb ba b " ]
    [ "$(kv scan "$D" --prefix b --end bb --reverse --keys-only | tr '\n' ' ')" = "bb ba b " ]
    [ "$(kv scan "$D" --reverse --limit 3 --keys-only | tr '\n' ' ')" = "d c bc " ]
    [ "$(kv scan "$D" --start b --end c --reverse --keys-only | tr '\n' ' ')" = "c bc bb ba b " ]
    [ "$(kv scan "$D" --limit 2)" = "$(printf 'a\tva\nb\tvb')" ]
    [ "$(kv scan "$D" --prefix zz | wc -c)" -eq 0 ]
    # a prefix of 0xff bytes has no successor: the reverse scan starts at the end
    kv put "$D" '%FF%FF' x
    kv put "$D" '%FF%FFa' y
    [ "$(kv scan "$D" --prefix '%FF%FF' --reverse --keys-only | tr '\n' ' ')" = "%FF%FFa %FF%FF " ]
}

@test "scan --limit 0 prints nothing" {
    printf '%s\n' 'put a 1' 'put b 2' | kv batch "$D"
    run kv scan "$D" --limit 0 --keys-only
    [ "$status" -eq 0 ]
    [ "$output" = "" ]
    run kv scan "$D" --limit 1 --keys-only
    [ "$output" = a ]
}

@test "scan --json is valid JSON; binary values as base64; values with newlines escaped in text" {
    kv put "$D" text 'he said "hi"\'
    printf 'two\nlines\ttab' | kv put "$D" nl
    printf '\xff\xfe\x00bin' | kv put "$D" 'bin%01'
    kv scan "$D" --json | json_ok
    [ "$(kv scan "$D" --json | json_get 'len(d)')" -eq 3 ]
    [ "$(kv scan "$D" --json | json_get '[e["value"] for e in d if e["key"]=="text"][0]')" = 'he said "hi"\' ]
    [ "$(kv scan "$D" --json | json_get '[e["value"] for e in d if e["key"]=="nl"][0]')" = "$(printf 'two\nlines\ttab')" ]
    [ "$(kv scan "$D" --json | json_get '[e["value_base64"] for e in d if e["key"]=="bin%01"][0]')" = "$(printf '\xff\xfe\x00bin' | base64)" ]
    kv scan "$D" --json --keys-only | json_ok
    kv scan "$D" --json --prefix nothing | json_ok
    [ "$(kv scan "$D" --json --prefix nothing)" = "[]" ]
    [ "$(kv scan "$D" --prefix nl)" = "$(printf 'nl\ttwo%%0Alines%%09tab')" ]
}

@test "scan --json of a large binary value streams it as base64" {
    head -c $((5 * 1024 * 1024 + 7)) /dev/urandom > "$T/big"
    kv put "$D" big < "$T/big"
    kv scan "$D" --json | json_get 'd[0]["value_base64"]' | base64 -d > "$T/big.out"
    cmp "$T/big" "$T/big.out"
}

@test "scan streams: the first key comes out before the scan ends" {
    seq 1 200000 | sed 's/^/put k/; s/$/ v/' | kv batch "$D"
    # head closes the pipe after one line: the scan must stop (SIGPIPE), not run to the end
    run bash -c "'$KVFS' scan '$D' --keys-only | head -n 1"
    [ "$status" -eq 0 ]
    [ "$output" = k1 ]
    [ "$(kv scan "$D" --keys-only | wc -l)" -eq 200000 ]
}

@test "resolve and short" {
    printf '%s\n' 'put abc1 x' 'put abd2 y' 'put zeta z' 'put ab z' | kv batch "$D"
    [ "$(kv resolve "$D" abc)" = abc1 ]
    [ "$(kv resolve "$D" z)" = zeta ]
    run --separate-stderr kv resolve "$D" abx
    [ "$status" -eq 1 ]
    [ "$stderr" = "kvfs: no key starts with 'abx'" ]
    run --separate-stderr kv resolve "$D" ab
    [ "$status" -eq 1 ]
    [ "$stderr" = "kvfs: prefix 'ab' is ambiguous: 'ab', 'abc1', ..." ]
    [ "$(kv short "$D" zeta)" = z ]
    [ "$(kv short "$D" abc1)" = abc ]
    run --separate-stderr kv short "$D" nope
    [ "$status" -eq 1 ]
    [ "$stderr" = "kvfs: key 'nope' not found" ]
    run --separate-stderr kv short "$D" ab
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"no unique prefix"* ]]
    # a prefix that is not itself a key: the message names the two keys (it named the prefix twice)
    kv put "$D" abc2 w
    run --separate-stderr kv resolve "$D" abc
    [ "$status" -eq 1 ]
    [ "$stderr" = "kvfs: prefix 'abc' is ambiguous: 'abc1', 'abc2', ..." ]
}

@test "a store locked by a process that is not a kvfs daemon: clear error after waiting" {
    kv put "$D" a 1
    # a put reading a pipe holds the store open (and locked) until its input ends
    mkfifo "$T/fifo"
    timeout 30 "$KVFS" put "$D" held < "$T/fifo" 3>&- &
    holder=$!
    exec 7>"$T/fifo"
    sleep 0.3
    SECONDS=0
    run --separate-stderr env KVFS_LOCK_WAIT=1 timeout 20 "$KVFS" get "$D" a
    waited=$SECONDS
    exec 7>&-
    wait "$holder"
    [ "$status" -eq 1 ]
    [[ "$stderr" == "kvfs: $D: the store is locked by another process"* ]]
    [ "$waited" -ge 1 ]
    [ "$waited" -le 5 ]
    [ "$(kv get "$D" a)" = 1 ]
    [ "$(kv get "$D" held | wc -c)" -eq 0 ]
}

@test "a bad KVFS_LOCK_WAIT is an error, not the default wait" {
    kv put "$D" a 1
    for bad in abc 5s -1 86401 nan 1e400 0x10 1e3 +5 -0 " 5" "5 " . 1..2 inf; do
        run --separate-stderr env KVFS_LOCK_WAIT="$bad" "$KVFS" get "$D" a
        [ "$status" -eq 1 ]
        [ "$output" = "" ]
        [ "$stderr" = "kvfs: KVFS_LOCK_WAIT=$bad: not a number of seconds from 0 to 86400" ]
    done
    # nothing is done: not even the directory of a new store is made
    run --separate-stderr env KVFS_LOCK_WAIT=abc "$KVFS" put "$T/new" k v
    [ "$status" -eq 1 ]
    [ ! -e "$T/new" ]
    # kvfs mount refuses it before mounting anything
    mkdir "$T/mnt"
    run --separate-stderr env KVFS_LOCK_WAIT=abc "$KVFS" mount "$D" "$T/mnt"
    [ "$status" -ne 0 ]
    [ "$stderr" = "kvfs: KVFS_LOCK_WAIT=abc: not a number of seconds from 0 to 86400" ]
    ! mountpoint -q "$T/mnt"
    # good values, an empty one (the default) and fractions
    for good in "" 0 0.5 86400 .5 5. 007 "0.$(printf "%0400d" 1)"; do
        [ "$(KVFS_LOCK_WAIT="$good" kv get "$D" a)" = 1 ]
    done
}

@test "tools wait for each other: concurrent writers all succeed" {
    kv put "$D" init 0
    for i in $(seq 1 8); do kv put "$D" "k$i" "$i" 3>&- & done
    wait
    [ "$(kv scan "$D" --prefix k --keys-only | wc -l)" -eq 8 ]
}

@test "Ctrl-C while put reads stdin writes nothing and leaves the store usable" {
    kv put "$D" a 1
    mkfifo "$T/fifo"
    timeout 20 "$KVFS" put "$D" partial < "$T/fifo" 3>&- &
    pid=$!
    exec 7>"$T/fifo"
    printf 'some bytes' >&7
    sleep 0.3
    kill -INT "$pid"
    wait "$pid" && st=0 || st=$?
    exec 7>&-
    [ "$st" -eq 130 ]
    run kv get "$D" partial
    [ "$status" -eq 1 ]
    [ "$(kv get "$D" a)" = 1 ]
    kv check "$D"
}

@test "Ctrl-C while batch reads stdin applies nothing" {
    mkfifo "$T/fifo"
    timeout 20 "$KVFS" batch "$D" < "$T/fifo" 3>&- &
    pid=$!
    exec 7>"$T/fifo"
    printf 'put x 1\nput y 2\n' >&7
    sleep 0.3
    kill -INT "$pid"
    wait "$pid" && st=0 || st=$?
    exec 7>&-
    [ "$st" -eq 130 ]
    run kv get "$D" x
    [ "$status" -eq 1 ]
}

@test "one put per command: the store does not collect a file per command" {
    # Each command opens the store, writes one batch and closes it. Each used to leave a batch-log file and, in
    # the end, a one-key table in level 1: 100 commands left 100 BATCHLOG files and dozens of tables.
    for i in $(seq 1 100); do kv put "$D" "k$((i * 37 % 100))" "v$i"; done
    [ "$(ls "$D" | grep -c '^BATCHLOG-')" -eq 1 ]
    tables=$(ls "$D" | grep -c '\.sst$')
    [ "$tables" -le 6 ] || { echo "$tables tables"; false; }
    run kv changes "$D"
    [ "$status" -eq 0 ]
    [[ "$output" == "batch 1 "* ]]
    [[ "$output" == *"batch 100 "* ]]
    run kv scan "$D" --keys-only
    [ "$(echo "$output" | wc -l)" -eq 100 ]
    run kv check "$D"
    [ "$status" -eq 0 ]
}

@test "a write to a store in a read-only directory names the file it could not create, not a cleanup's error" {
    [ "$(id -u)" -eq 0 ] || skip "needs root to run the tool as another user (root ignores directory modes)"
    command -v setpriv >/dev/null || skip "setpriv is not installed"
    chmod 0777 "$T"
    as_nobody() { timeout 20 setpriv --reuid=65534 --regid=65534 --clear-groups env KVFS_LOCK_WAIT=0 "$@"; }
    as_nobody "$KVFS" put "$D" a 1
    chmod 0555 "$D"
    run --separate-stderr as_nobody "$KVFS" put "$D" b 2
    [ "$status" -eq 1 ]
    [[ "$stderr" == "kvfs: $D: cannot open the store: open $D/MANIFEST-"*": Permission denied" ]]
    run --separate-stderr as_nobody "$KVFS" get "$D" a
    [ "$status" -eq 0 ]
    [ "$output" = 1 ]
    chmod 0755 "$D"
}

@test "commands that only read share an unmounted store: a scan feeding a loop of gets works; a writer still waits for them" {
    for i in $(seq 1 30); do kv put "$D" "k$i" "v$i"; done
    # scan holds the store open while each get opens it too (both read-only: a shared lock)
    out=$(KVFS_LOCK_WAIT=0 "$KVFS" scan "$D" --keys-only | while read -r k; do KVFS_LOCK_WAIT=0 "$KVFS" get "$D" "$k"; echo; done)
    [ "$(echo "$out" | grep -c '^v')" -eq 30 ]
    # a reader that stays open: a scan whose last value fills the pipe, read slowly
    head -c 300000 /dev/zero | tr '\0' x | kv put "$D" zz
    mkfifo "$T/fifo"
    "$KVFS" scan "$D" > "$T/fifo" 3>&- &
    pid=$!
    exec 7<"$T/fifo"
    read -r first <&7 # scan has the store open and waits for its reader
    run --separate-stderr env KVFS_LOCK_WAIT=0.2 "$KVFS" put "$D" w 1
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"the store is locked by another process"* ]]
    [ "$(KVFS_LOCK_WAIT=0 "$KVFS" get "$D" k1)" = v1 ] # another reader is let in
    cat <&7 >/dev/null
    exec 7<&-
    wait "$pid"
    kv put "$D" w 1
    [ "$(kv get "$D" w)" = 1 ]
}

@test "a writer gets in while read-only commands keep overlapping: a waiting writer goes first" {
    kv put "$D" a 1
    readers_overlap
    # before writers went first, the shared lock never came free and the put failed after its 10 s
    SECONDS=0
    run --separate-stderr env KVFS_LOCK_WAIT=10 timeout 30 "$KVFS" put "$D" w 1
    waited=$SECONDS
    rm "$T/run"
    wait "$READERS"
    echo "$stderr"
    [ "$status" -eq 0 ]
    [ "$waited" -lt 10 ]
    [ "$(kv get "$D" w)" = 1 ]
}

@test "while a writer waits for the store, readers wait for it too, and then see its write" {
    kv put "$D" a 1
    head -c 300000 /dev/zero | tr '\0' x | kv put "$D" zz
    # a reader that stays open: a scan whose last value fills the pipe, read only at the end
    mkfifo "$T/fifo"
    timeout 30 "$KVFS" scan "$D" > "$T/fifo" 3>&- &
    scan=$!
    exec 7<"$T/fifo"
    read -r first <&7
    timeout 30 env KVFS_LOCK_WAIT=20 "$KVFS" put "$D" w 1 3>&- &
    writer=$!
    # once the writer waits, a reader that does not wait is refused, as if the store were locked
    refused=0
    for i in $(seq 1 100); do
        KVFS_LOCK_WAIT=0 "$KVFS" get "$D" a > /dev/null 2>"$T/err" || { refused=1; break; }
        sleep 0.05
    done
    # a reader that waits gets in after the writer: it sees the write
    timeout 30 env KVFS_LOCK_WAIT=20 "$KVFS" get "$D" w > "$T/late" 2>&1 3>&- &
    late=$!
    sleep 0.3
    cat <&7 >/dev/null # the scan ends
    exec 7<&-
    wait "$scan"
    wait "$writer"
    wait "$late" || true
    cat "$T/err"
    [ "$refused" -eq 1 ]
    [[ "$(cat "$T/err")" == "kvfs: $D: the store is locked by another process"* ]]
    [ "$(cat "$T/late")" = 1 ]
}

@test "a user who may read a store's files but not write them can read it (its LOCK file is taken for reading)" {
    [ "$(id -u)" -eq 0 ] || skip "needs root to run the tool as another user"
    command -v setpriv >/dev/null || skip "setpriv is not installed"
    kv put "$D" a 1
    chmod 0755 "$T" "$D"
    [ "$(stat -c %U "$D/LOCK")" = root ]
    as_nobody() { timeout 20 setpriv --reuid=65534 --regid=65534 --clear-groups env KVFS_LOCK_WAIT=0 "$@"; }
    run --separate-stderr as_nobody "$KVFS" get "$D" a
    echo "$stderr"
    [ "$status" -eq 0 ]
    [ "$output" = 1 ]
    run --separate-stderr as_nobody "$KVFS" put "$D" b 2
    [ "$status" -eq 1 ]
}

@test "batch input larger than 256 MiB is refused, applying nothing, before it is all held in memory" {
    kv put "$D" a 1
    run --separate-stderr bash -c "yes 'put x/y zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz' | head -c 300M | \"$KVFS\" batch \"$D\""
    [ "$status" -eq 1 ]
    [[ "$stderr" == "kvfs: batch: the input is larger than 256 MiB"* ]]
    run kv get "$D" x/y
    [ "$status" -eq 1 ]
    [ "$(kv get "$D" a)" = 1 ]
}
