#!/usr/bin/env bash
# bench/fs_bench.sh — the filesystem benchmark: kvfs against libfuse's passthrough_ll example and native ext4, in
# one invocation, on the same disk. Run by `make -C bench fs` (and so by `make bench`).
#
#   bash bench/fs_bench.sh [--quick] [--docs] [--rounds N] [--dir DIR] [--keep] [--targets ext4,pt,kvfs]
#
#   --quick    a small run (2,000 small files, 500-file tree, 128 MiB sequential, 64 MiB random file): about a minute
#   --docs     also write docs/fs-bench.png and the results block of the Filesystem section of docs/benchmarks.md
#   --dir DIR  where the work directory is made (default $BENCH_DIR or /var/tmp; must be a local disk, not tmpfs)
#   --rounds N repeat the whole sequence N times on fresh targets and report medians (default 3; 1 with --quick);
#              a round is not started when it would take the run past about 7 minutes
#   --keep     keep the work directory (stores, logs) instead of deleting it
#   --targets  a subset of ext4, pt (passthrough_ll), kvfs
#
# Writes bench/out/fs.md (tables), bench/out/fs.csv (raw seconds and daemon CPU), bench/out/fs.txt (console) and
# bench/out/fs.png when gnuplot is there. Needs: cc (for passthrough_ll and the driver bench/fs/fsops.c),
# pkg-config and libfuse3-dev (passthrough_ll), fusermount3, rsync, tar. Root is needed to drop the page cache between passes (without
# it the "cold" passes are only after a remount, which empties the FUSE caches but not the page cache of the disk).
# Every mount is unmounted and the work directory removed on exit, also on error or signal; every step has a
# timeout; nothing reads stdin.
set -u -o pipefail
exec </dev/null

QUICK=0 DOCS=0 KEEP=0 ROUNDS=
BASE=${BENCH_DIR:-/var/tmp}
TARGETS="ext4 pt kvfs"
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --docs) DOCS=1 ;;
    --keep) KEEP=1 ;;
    --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
    --rounds=*) ROUNDS=${1#--rounds=} ;;
    --dir) BASE=${2:?--dir needs a directory}; shift ;;
    --dir=*) BASE=${1#--dir=} ;;
    --targets) TARGETS=${2:?--targets needs a list}; TARGETS=${TARGETS//,/ }; shift ;;
    --targets=*) TARGETS=${1#--targets=}; TARGETS=${TARGETS//,/ } ;;
    -h | --help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "fs_bench: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/bench/out
mkdir -p "$OUT"
TXT=$OUT/fs.txt
: >"$TXT"
log() { printf '%s\n' "$*" | tee -a "$TXT"; }
warn() { printf 'fs_bench: %s\n' "$*" | tee -a "$TXT" >&2; }

# ---- sizes -----------------------------------------------------------------------------------------------------
if [ $QUICK = 1 ]; then
    NFILES=2000 NDIRS=4 TREE_FILES=500 SEQ_MB=128 RAND_MB=64 RAND_OPS=1000 STEP_TMO=60 BUDGET=120
    ROUNDS=${ROUNDS:-1}
else
    NFILES=20000 NDIRS=10 TREE_FILES=5000 SEQ_MB=1024 RAND_MB=256 RAND_OPS=5000 STEP_TMO=180 BUDGET=420
    ROUNDS=${ROUNDS:-3}
fi
# BUDGET: no new round starts if it would end after BUDGET seconds; DEADLINE: no step starts after it.
DEADLINE=$((BUDGET * 2))
FSIZE=100 RAND_BS=4096 TREE_SEED=20240601
PT_OPTS="writeback,cache=always,xattr"

# passthrough_ll keeps one O_PATH descriptor per inode the kernel knows, and the kernel keeps every inode it looked
# up while memory lasts: it needs NFILES + a few hundred descriptors. Raise the soft limit to the hard one; if the
# hard limit is too low (raising it needs CAP_SYS_RESOURCE), use fewer files, the same number for every target.
NOFILE_HARD=$(ulimit -Hn)
[ "$NOFILE_HARD" = unlimited ] && NOFILE_HARD=1048576
NFILES_ASKED=$NFILES
case " $TARGETS " in *" pt "*)
    if [ "$NOFILE_HARD" -lt $((NFILES + 1000)) ]; then
        NFILES=$(((NOFILE_HARD - 500) / 1000 * 1000))
        [ "$NFILES" -lt 1000 ] && NFILES=1000
        warn "open-file hard limit is $NOFILE_HARD and cannot be raised here: $NFILES small files instead of $NFILES_ASKED, for every target"
    fi ;;
esac
NFILES=$((NFILES / NDIRS * NDIRS))

# ---- work directory, cleanup -----------------------------------------------------------------------------------
mkdir -p "$BASE" || exit 1
case "$BASE" in *[[:space:]]*) echo "fs_bench: --dir must not contain spaces" >&2; exit 2 ;; esac
W=$(mktemp -d "$BASE/kvfs-fsbench.XXXXXX") || exit 1
W=$(cd "$W" && pwd -P)
BACKING_FS=$(findmnt -n -o FSTYPE -T "$W" 2>/dev/null || stat -f -c %T "$W")
declare -A PID MNT
START=$SECONDS

is_mounted() { awk -v m="$1" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; }

stop_target() { # stop_target T: unmount and wait for the daemon (it flushes); escalate if it does not go
    local t=$1 m=${MNT[$1]:-} p=${PID[$1]:-}
    [ -n "$m" ] || return 0
    if is_mounted "$m"; then
        timeout 60 fusermount3 -u "$m" 2>>"$W/$t.log" || {
            warn "$t: fusermount3 -u failed; killing the daemon"
            [ -n "$p" ] && kill -KILL "$p" 2>/dev/null
            timeout 10 fusermount3 -uz "$m" 2>/dev/null
        }
    fi
    if [ -n "$p" ]; then
        local i=0
        while kill -0 "$p" 2>/dev/null && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
        if kill -0 "$p" 2>/dev/null; then
            warn "$t: daemon $p still running 120 s after unmount; killing it"
            kill -TERM "$p" 2>/dev/null; sleep 2; kill -KILL "$p" 2>/dev/null
        fi
        wait "$p" 2>/dev/null
    fi
    is_mounted "$m" && timeout 10 fusermount3 -uz "$m" 2>/dev/null
    PID[$t]=""
}

cleanup() {
    trap - EXIT INT TERM HUP
    local t
    for t in pt kvfs; do stop_target "$t"; done
    if [ $KEEP = 1 ]; then
        echo "fs_bench: work directory kept: $W" >&2
    else
        rm -rf "$W"
    fi
}
trap cleanup EXIT
CHILD=""
trap 'warn "interrupted"; [ -n "$CHILD" ] && kill -TERM "$CHILD" 2>/dev/null; exit 130' INT TERM HUP

# ---- build -----------------------------------------------------------------------------------------------------
mkdir -p "$W/bin"
CC=${CC:-cc}
FSOPS=$W/bin/fsops
"$CC" -std=c11 -O2 -Wall -Wextra -o "$FSOPS" "$ROOT/bench/fs/fsops.c" || { warn "cannot build bench/fs/fsops.c"; exit 1; }

if [[ " $TARGETS " == *" pt "* ]]; then
    PT_SRC=/usr/share/doc/libfuse3-dev/examples/passthrough_ll.c
    # shellcheck disable=SC2046 # pkg-config's flags are meant to be split
    if [ -f "$PT_SRC" ] && "$CC" -O2 -Wall -o "$W/bin/passthrough_ll" "$PT_SRC" $(pkg-config --cflags --libs fuse3) \
        >"$W/pt-build.log" 2>&1; then
        PT=$W/bin/passthrough_ll
    else
        warn "cannot build passthrough_ll (needs libfuse3-dev: $PT_SRC); skipping it"
        TARGETS=${TARGETS//pt/}
    fi
fi
if [[ " $TARGETS " == *" kvfs "* ]]; then
    if [ ! -x "$ROOT/build/kvfs" ]; then
        log "build/kvfs missing: make -j2 all"
        timeout 600 make -C "$ROOT" -j2 all >"$W/build.log" 2>&1 || { warn "build failed (see $W/build.log)"; }
    fi
    if [ -x "$ROOT/build/kvfs" ]; then
        cp "$ROOT/build/kvfs" "$W/bin/kvfs" # the tree may be rebuilt while we run
        KVFS=$W/bin/kvfs
    else
        warn "no build/kvfs; skipping kvfs"
        TARGETS=${TARGETS//kvfs/}
    fi
fi
read -r -a TG <<<"$TARGETS"
[ ${#TG[@]} -gt 0 ] || { warn "no target left"; exit 1; }
has() { [[ " ${TG[*]} " == *" $1 "* ]]; }

CAN_DROP=0
if [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/drop_caches ]; then CAN_DROP=1; else
    warn "not root: cannot drop the page cache; cold passes are cold for the FUSE caches only"
fi
drop_caches() {
    timeout 120 sync
    [ $CAN_DROP = 1 ] && echo 3 >/proc/sys/vm/drop_caches
}

# ---- targets ---------------------------------------------------------------------------------------------------
# D[t] is the directory the workloads use on target t.
declare -A D
for t in "${TG[@]}"; do
    case $t in
    ext4) mkdir -p "$W/ext4"; D[ext4]=$W/ext4 ;;
    pt) mkdir -p "$W/pt-src" "$W/pt-mnt"; MNT[pt]=$W/pt-mnt; D[pt]=$W/pt-mnt ;;
    kvfs) mkdir -p "$W/kvfs-mnt"; MNT[kvfs]=$W/kvfs-mnt; D[kvfs]=$W/kvfs-mnt ;;
    esac
done

start_target() {
    local t=$1 m=${MNT[$1]:-} p
    [ -n "$m" ] || return 0
    case $t in
    pt) (ulimit -n "$NOFILE_HARD" && exec "$PT" -f -o "source=$W/pt-src,$PT_OPTS" "$m") >>"$W/pt.log" 2>&1 & ;;
    kvfs) "$KVFS" mount -f "$W/kvfs-data" "$m" >>"$W/kvfs.log" 2>&1 & ;;
    esac
    p=$!
    PID[$t]=$p
    local i=0
    until is_mounted "$m"; do
        if ! kill -0 "$p" 2>/dev/null || [ $i -ge 300 ]; then
            warn "$t: mount failed; log:"; tail -5 "$W/$t.log" >&2
            return 1
        fi
        sleep 0.1; i=$((i + 1))
    done
    timeout 10 stat "$m/." >/dev/null || { warn "$t: mount does not answer"; return 1; }
}
remount() { stop_target "$1" && start_target "$1"; }

# Cold: every FUSE daemon restarted (its caches and the kernel's FUSE caches empty), then the page cache, dentries
# and inodes dropped (native ext4 included).
cold() {
    local t
    for t in "${TG[@]}"; do [ -n "${MNT[$t]:-}" ] && { remount "$t" || BROKEN[$t]=1; }; done
    drop_caches
}

# Before each target's large-I/O step: the page cache (and what the previous target left in it) dropped, so that
# every target starts from the same memory. On a VM whose free memory goes back to the host (free page reporting,
# here also DAMON's proactive reclaim), memory the guest has not touched lately costs a host fault per page on first
# use: measured here, a 1 GiB `dd` into passthrough_ll took 1.24-1.33 s first and 3.9-5.2 s right after the same
# `dd` into kvfs, and kvfs's 1.40-1.46 s first (or after a drop) and 2.3-4.0 s right after passthrough_ll's.
same_start() { drop_caches; }

daemon_cpu() { # user+system clock ticks of the daemon of $1 (0 for ext4)
    local p=${PID[$1]:-}
    if [ -n "$p" ] && [ -r "/proc/$p/stat" ]; then
        awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat"
    else echo 0; fi
}
settle() { # wait (at most 10 s) until no daemon uses CPU for 0.3 s: background compaction off the clock
    local i=0 a b t
    while [ $i -lt 40 ]; do
        a=0; for t in "${TG[@]}"; do a=$((a + $(daemon_cpu "$t"))); done
        sleep 0.3
        b=0; for t in "${TG[@]}"; do b=$((b + $(daemon_cpu "$t"))); done
        [ "$a" = "$b" ] && return 0
        i=$((i + 1))
    done
}

# ---- measuring -------------------------------------------------------------------------------------------------
# ORDER: workload keys in table order; NAME/UNIT/AMOUNT per key; SEC/CPU per key.target.
declare -A NAME SHORT UNIT AMOUNT SEC CPU SECR CPUR BROKEN
ORDER=() CHECK_FAILS=() STEP_FAILS=()
TICK=$(getconf CLK_TCK)
define() { ORDER+=("$1"); NAME[$1]=$2; SHORT[$1]=$3; UNIT[$1]=$4; AMOUNT[$1]=$5; } # KEY NAME SHORT UNIT AMOUNT

# measure KEY TARGET CMD...: run CMD (in the target's directory) with a timeout; record wall seconds and the
# daemon's CPU seconds.
measure() {
    local k=$1 t=$2; shift 2
    local kr=$k.$t.$ROUND
    if [ -n "${BROKEN[$t]:-}" ]; then SECR[$kr]=FAIL; return; fi
    if [ $((SECONDS - START)) -gt $DEADLINE ]; then
        SECR[$kr]=SKIP; warn "past ${DEADLINE}s: skipping $k on $t"; return
    fi
    local s0=$EPOCHREALTIME
    timeout 120 sync
    settle
    local c0 c1 t0 t1 rc
    c0=$(daemon_cpu "$t")
    t0=$EPOCHREALTIME
    # In the background and waited for, so that a signal to this script is handled at once.
    (cd "${D[$t]}" && exec timeout -k 5 "$STEP_TMO" "$@") >"$W/step.out" 2>"$W/step.err" &
    CHILD=$!
    wait "$CHILD"
    rc=$?
    CHILD=""
    t1=$EPOCHREALTIME
    c1=$(daemon_cpu "$t")
    if [ $rc != 0 ]; then
        SECR[$kr]=FAIL
        STEP_FAILS+=("round $ROUND, $t: $k failed (exit $rc): $(tail -2 "$W/step.err" | head -c 200 | tr -c '[:print:]' ' ')")
        warn "$k on $t failed (exit $rc$([ $rc = 124 ] && echo ", timeout ${STEP_TMO}s")): $(tail -3 "$W/step.err" | tr '\n' ' ')"
        if [ -n "${MNT[$t]:-}" ]; then # a wedged or dead daemon: restart it for the next workloads
            remount "$t" || BROKEN[$t]=1
        fi
        return
    fi
    SECR[$kr]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')
    CPUR[$kr]=$(awk -v a="$c0" -v b="$c1" -v hz="$TICK" 'BEGIN { printf "%.2f", (b - a) / hz }')
    printf '  %-22s %-5s %9.3f s   daemon CPU %6s s   [at %4d s; sync+settle %.1f s]\n' "$k" "$t" "${SECR[$kr]}" \
        "${CPUR[$kr]}" $((SECONDS - START)) "$(awk -v a="$s0" -v b="$t0" 'BEGIN { print b - a }')" | tee -a "$TXT"
}
median() { # the median of the numeric arguments (nothing if none)
    printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g |
        awk '{ v[NR] = $1 } END { if (NR) printf "%.4f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
median_all() { # SEC and CPU per workload and target: medians over the rounds; FAIL if no round succeeded
    local k t r s c
    for k in "${ORDER[@]}"; do
        for t in "${TG[@]}"; do
            s=() c=()
            for ((r = 1; r <= ROUNDS_DONE; r++)); do s+=("${SECR[$k.$t.$r]:-}"); c+=("${CPUR[$k.$t.$r]:-}"); done
            SEC[$k.$t]=$(median "${s[@]}")
            CPU[$k.$t]=$(median "${c[@]}")
            [ -n "${SEC[$k.$t]}" ] || SEC[$k.$t]=FAIL
            [ -n "${CPU[$k.$t]}" ] && CPU[$k.$t]=$(printf '%.2f' "${CPU[$k.$t]}")
        done
    done
}
check() { # check TARGET WHAT EXPECTED CMD...: untimed sanity check of a result
    local t=$1 what=$2 want=$3 got; shift 3
    got=$(cd "${D[$t]}" && timeout 120 "$@" 2>/dev/null)
    if [ "$got" != "$want" ]; then
        warn "check failed on $t: $what is '$got', expected '$want'"
        CHECK_FAILS+=("round $ROUND, $t: $what is '$(printf '%s' "$got" | head -c 160 | tr -c '[:print:]' '?')', expected '$want'")
    fi
}

# ---- the run ---------------------------------------------------------------------------------------------------
log "kvfs filesystem benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')$([ $QUICK = 1 ] && echo ' (--quick)')"
log "machine: $(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r)"
log "work directory: $W ($BACKING_FS on $(df --output=source "$W" | tail -1)); targets: ${TG[*]}"
KV_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')
KV_BUILT=$(date -u -r "$ROOT/build/kvfs" '+%Y-%m-%d %H:%M UTC' 2>/dev/null || echo '?')
log "kvfs: build/kvfs of $KV_BUILT (HEAD $KV_REV; the work tree may differ), copied at start; default options"
has pt && log "passthrough_ll: -o source=DIR,$PT_OPTS, open-file limit $NOFILE_HARD"
[ "$BACKING_FS" = tmpfs ] && warn "$W is on tmpfs: the numbers mean little (use --dir on a disk)"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average at start: $LOAD_START"
awk '{ exit !($1 > 0.7) }' /proc/loadavg && warn "the machine is busy (load $LOAD_START): expect noisy numbers"

SMALL_DIRS=$(for ((d = 0; d < NDIRS; d++)); do printf 'small/d%02d ' $d; done)
define create "create $NFILES files of $FSIZE B" "create" "files/s" $NFILES
define stat_cold "stat, cold" "stat cold" "stats/s" $NFILES
define stat_warm "stat, warm" "stat warm" "stats/s" $NFILES
define read_cold "read (open+read+close), cold" "read cold" "files/s" $NFILES
define ls_cold "ls -l, cold" "ls -l cold" "entries/s" $NFILES
define ls_warm "ls -l, warm" "ls -l warm" "entries/s" $NFILES
define list_cold "readdir+lstat, cold" "readdir+lstat cold" "entries/s" $NFILES
define delete "delete (unlink)" "unlink" "files/s" $NFILES
define cp "cp -r tree" "cp -r" "s" $TREE_FILES
define rsync "rsync -a tree" "rsync -a" "s" $TREE_FILES
define rsync_again "rsync -a again (no change), cold" "rsync no-op cold" "s" $TREE_FILES
define tar "tar c | tar x tree" "tar c|x" "s" $TREE_FILES
define rm_tree "rm -rf tree" "rm -rf tree" "s" $TREE_FILES
define seq_write "sequential write $SEQ_MB MiB (dd bs=1M conv=fsync)" "seq write" "MB/s" $((SEQ_MB << 20))
define seq_read "sequential read $SEQ_MB MiB, cold (dd bs=1M)" "seq read cold" "MB/s" $((SEQ_MB << 20))
define rand_read "random 4 KiB reads, cold" "rand read cold" "ops/s" $RAND_OPS
define rand_write "random 4 KiB writes + fsync" "rand write" "ops/s" $RAND_OPS

# The data every round copies in: a source-like tree and incompressible bytes, both on native ext4.
mkdir -p "$W/src-parent"
(cd "$W/src-parent" && "$FSOPS" tree src "$TREE_FILES" "$TREE_SEED" >/dev/null) || { warn "tree generation failed"; exit 1; }
SRC=$W/src-parent/src
TREE_MB=$(du -sm --apparent-size "$SRC" | cut -f1)
TREE_DIRS=$(find "$SRC" -type d | wc -l)
TREE_LINKS=$(find "$SRC" -type l | wc -l)
"$FSOPS" fill "$W/random.bin" "$SEQ_MB" >/dev/null || { warn "cannot write $W/random.bin"; exit 1; }
warm_src() { tar c -C "$SRC" . | cat >/dev/null; }

# Fresh, empty targets: ext4 and passthrough_ll's directories emptied, a new kvfs store.
fresh_targets() {
    local t
    for t in "${TG[@]}"; do
        stop_target "$t"
        case $t in
        ext4) find "$W/ext4" -mindepth 1 -delete ;;
        pt) find "$W/pt-src" -mindepth 1 -delete ;;
        kvfs) rm -rf "$W/kvfs-data" ;;
        esac
        BROKEN[$t]=""
        start_target "$t" || BROKEN[$t]=1
    done
}

one_round() {
    fresh_targets

    # 1. Small files.
    log "== small files: $NFILES files of $FSIZE bytes in $NDIRS directories"
    for t in "${TG[@]}"; do mkdir -p "${D[$t]}/small" 2>/dev/null; measure create "$t" "$FSOPS" create small $NFILES $NDIRS $FSIZE; done
    cold
    for t in "${TG[@]}"; do measure stat_cold "$t" "$FSOPS" stat small $NFILES $NDIRS; measure stat_warm "$t" "$FSOPS" stat small $NFILES $NDIRS; done
    cold
    for t in "${TG[@]}"; do measure read_cold "$t" "$FSOPS" read small $NFILES $NDIRS $FSIZE; done
    cold
    for t in "${TG[@]}"; do
        measure ls_cold "$t" bash -c "ls -l $SMALL_DIRS >/dev/null"
        measure ls_warm "$t" bash -c "ls -l $SMALL_DIRS >/dev/null"
        check "$t" "well-formed names listed by ls" "$NFILES" bash -c "ls $SMALL_DIRS | grep -ac '^f[0-9]\{6\}\$'"
    done
    cold
    for t in "${TG[@]}"; do measure list_cold "$t" "$FSOPS" list $SMALL_DIRS; done
    for t in "${TG[@]}"; do measure delete "$t" "$FSOPS" unlink small $NFILES $NDIRS; done

    # 2. The source-like tree, copied from native ext4 (in the page cache) into each target.
    log "== tree: $TREE_FILES files, $TREE_DIRS directories, $TREE_LINKS symlinks, $TREE_MB MiB"
    warm_src
    for t in "${TG[@]}"; do
        measure cp "$t" cp -r "$SRC" cp
        check "$t" "files copied by cp -r" "$TREE_FILES" bash -c "find cp -type f | wc -l"
    done
    for t in "${TG[@]}"; do
        measure rsync "$t" rsync -a "$SRC/" rsync/
        check "$t" "diff -r of source and rsync copy" "" bash -c "diff -r '$SRC' rsync 2>&1 | head -3"
    done
    cold
    for t in "${TG[@]}"; do measure rsync_again "$t" rsync -a "$SRC/" rsync/; done
    warm_src
    for t in "${TG[@]}"; do
        measure tar "$t" bash -c "mkdir -p tar && tar c -C '$SRC' . | tar x -C tar"
        check "$t" "files unpacked by tar" "$TREE_FILES" bash -c "find tar -type f | wc -l"
    done
    for t in "${TG[@]}"; do measure rm_tree "$t" rm -rf cp; done
    for t in "${TG[@]}"; do (cd "${D[$t]}" && timeout 300 rm -rf rsync tar) || warn "$t: cannot remove the tree copies"; done

    # 3. Sequential 1 MiB I/O of incompressible data, the source file in the page cache. The page cache is dropped
    # before each target's step, not once for all: on this VM a step that needs memory the guest has not touched
    # lately runs 2-4 times slower (see same_start), which would penalise whichever target comes second.
    log "== sequential: $SEQ_MB MiB"
    for t in "${TG[@]}"; do
        same_start
        cat "$W/random.bin" >/dev/null
        measure seq_write "$t" dd if="$W/random.bin" of=big bs=1M conv=fsync status=none
    done
    cold
    for t in "${TG[@]}"; do same_start; measure seq_read "$t" dd if=big of=/dev/null bs=1M status=none; done
    for t in "${TG[@]}"; do rm -f "${D[$t]}/big"; done

    # 4. Random 4 KiB I/O (buffered, no O_DIRECT) in a file of RAND_MB MiB written beforehand.
    log "== random: $RAND_OPS reads and $RAND_OPS writes of $RAND_BS bytes in a $RAND_MB MiB file"
    for t in "${TG[@]}"; do
        (cd "${D[$t]}" && timeout "$STEP_TMO" dd if="$W/random.bin" of=rand bs=1M count="$RAND_MB" conv=fsync status=none) ||
            warn "$t: cannot write the random-I/O file"
    done
    cold
    for t in "${TG[@]}"; do same_start; measure rand_read "$t" "$FSOPS" rand rand read $RAND_OPS $RAND_BS 7; done
    for t in "${TG[@]}"; do same_start; measure rand_write "$t" "$FSOPS" rand rand write $RAND_OPS $RAND_BS 8; done
    for t in "${TG[@]}"; do rm -f "${D[$t]}/rand"; done
}

ROUNDS_DONE=0
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    r0=$SECONDS
    log ""
    log "=== round $ROUND of $ROUNDS"
    one_round
    ROUNDS_DONE=$ROUND
    took=$((SECONDS - r0))
    if [ $ROUND -lt $ROUNDS ] && [ $((SECONDS - START + took)) -gt $BUDGET ]; then
        warn "round $ROUND took ${took}s: another would pass the ${BUDGET}s budget; stopping after $ROUND"
        break
    fi
done
for t in "${TG[@]}"; do stop_target "$t"; done
rm -f "$W/random.bin"
median_all
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
log ""
log "load average at end: $LOAD_END"
log "total time: $((SECONDS - START)) s"

# ---- report ----------------------------------------------------------------------------------------------------
# rate KEY T: ops/s or MB/s (or seconds for "s" rows); speed KEY T: higher is better, for ratios.
rate() {
    local sec=${SEC[$1.$2]:-}
    case "$sec" in "" | FAIL | SKIP) echo "${sec:--}"; return ;; esac
    awk -v s="$sec" -v n="${AMOUNT[$1]}" -v u="${UNIT[$1]}" 'BEGIN {
        if (u == "s") printf "%.2f", s; else if (u == "MB/s") printf "%.0f", n / s / 1e6; else printf "%.0f", n / s }'
}
ratio() { # speed of kvfs over speed of $2
    local a=${SEC[$1.kvfs]:-} b=${SEC[$1.$2]:-}
    [[ "$a" =~ ^[0-9.]+$ && "$b" =~ ^[0-9.]+$ ]] || { echo "-"; return; }
    awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", b / a }'
}
fmt() { # thousands separators for integers
    if [[ "$1" =~ ^[0-9]+$ ]]; then sed ':a; s/\B[0-9]\{3\}\>/,&/; ta' <<<"$1"; else printf '%s' "$1"; fi
}

CSV=$OUT/fs.csv
{
    echo "key,workload,unit,amount,target,round,seconds,daemon_cpu_s"
    for k in "${ORDER[@]}"; do
        for t in "${TG[@]}"; do
            for ((r = 1; r <= ROUNDS_DONE; r++)); do
                echo "$k,\"${NAME[$k]}\",${UNIT[$k]},${AMOUNT[$k]},$t,$r,${SECR[$k.$t.$r]:-},${CPUR[$k.$t.$r]:-}"
            done
            echo "$k,\"${NAME[$k]}\",${UNIT[$k]},${AMOUNT[$k]},$t,median,${SEC[$k.$t]:-},${CPU[$k.$t]:-}"
        done
    done
} >"$CSV"

MD=$OUT/fs.md
{
    echo "Run of $(date -u '+%Y-%m-%d %H:%M UTC')$([ $QUICK = 1 ] && echo ', `--quick`'): $(nproc) cores," \
        "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r);" \
        "every target on $BACKING_FS ($(df --output=source "$W" | tail -1)); kvfs built $KV_BUILT (HEAD $KV_REV)" \
        "with default options; passthrough_ll \`-o $PT_OPTS\`. Median of $ROUNDS_DONE round(s) on fresh targets;" \
        "total $((SECONDS - START)) s; load average $LOAD_START at start, $LOAD_END at end."
    echo
    echo "Ratios are kvfs's speed over the other's (above 1: kvfs is faster). Tree rows are seconds (lower is better)."
    echo "CPU columns: user+system seconds of the FUSE daemon during the step."
    echo
    printf '| workload | unit |'
    for t in "${TG[@]}"; do case $t in ext4) printf ' ext4 |' ;; pt) printf ' passthrough_ll |' ;; kvfs) printf ' kvfs |' ;; esac; done
    has kvfs && has pt && printf ' kvfs/pt |'
    has kvfs && has ext4 && printf ' kvfs/ext4 |'
    has pt && printf ' pt CPU s |'
    has kvfs && printf ' kvfs CPU s |'
    echo
    printf '|---|---|'
    for t in "${TG[@]}"; do printf -- '---:|'; done
    has kvfs && has pt && printf -- '---:|'
    has kvfs && has ext4 && printf -- '---:|'
    has pt && printf -- '---:|'
    has kvfs && printf -- '---:|'
    echo
    for k in "${ORDER[@]}"; do
        printf '| %s | %s |' "${NAME[$k]//|/\\|}" "${UNIT[$k]}"
        for t in "${TG[@]}"; do printf ' %s |' "$(fmt "$(rate "$k" "$t")")"; done
        has kvfs && has pt && printf ' %s |' "$(ratio "$k" pt)"
        has kvfs && has ext4 && printf ' %s |' "$(ratio "$k" ext4)"
        has pt && printf ' %s |' "${CPU[$k.pt]:--}"
        has kvfs && printf ' %s |' "${CPU[$k.kvfs]:--}"
        echo
    done
    if [ ${#STEP_FAILS[@]} -gt 0 ] || [ ${#CHECK_FAILS[@]} -gt 0 ]; then
        echo
        echo "Failures (a failed step counts as FAIL in its round; a failed check does not change the timing):"
        echo
        for f in "${STEP_FAILS[@]}" "${CHECK_FAILS[@]}"; do printf -- '- %s\n' "${f//|/\\|}"; done
    fi
    if has kvfs; then
        echo
        echo "Targets of issue 3:"
        echo
        echo "| target | measured | result |"
        echo "|---|---|---|"
        target() { # target TEXT KEY BASELINE MIN
            local r; r=$(ratio "$2" "$3")
            local v=miss
            [[ "$r" =~ ^[0-9.]+$ ]] || { echo "| $1 | not measured | - |"; return; }
            awk -v r="$r" -v m="$4" 'BEGIN { exit !(r >= m) }' && v=pass
            echo "| ${1//|/\\|} | ${r}× | $v |"
        }
        if has pt; then
            target "small-file create ≥ 2× passthrough_ll" create pt 2
        fi
        if has ext4; then target "small-file create ≥ 1× ext4" create ext4 1; fi
        if has pt; then
            target "stat (cold) ≥ 3× passthrough_ll" stat_cold pt 3
            target "list (ls -l, cold) ≥ 3× passthrough_ll" ls_cold pt 3
        fi
        if has ext4; then
            target "cp -r ≥ 1× ext4" cp ext4 1
            target "tar c | tar x ≥ 1× ext4" tar ext4 1
            target "rsync -a ≥ 1× ext4" rsync ext4 1
        fi
        if has pt; then
            target "sequential write ≥ 0.8× passthrough_ll" seq_write pt 0.8
            target "sequential read ≥ 0.8× passthrough_ll" seq_read pt 0.8
        fi
    fi
} >"$MD"
log ""
tee -a "$TXT" <"$MD"

# ---- plot and docs ---------------------------------------------------------------------------------------------
PNG=$OUT/fs.png
rm -f "$PNG"
if ! command -v gnuplot >/dev/null && [ $DOCS = 1 ] && [ "$(id -u)" = 0 ]; then
    log "installing gnuplot-nox for the plot"
    timeout 300 apt-get install -y -qq gnuplot-nox >/dev/null 2>&1 || warn "cannot install gnuplot-nox"
fi
if command -v gnuplot >/dev/null && has ext4 && { has pt || has kvfs; }; then
    for k in "${ORDER[@]}"; do # workload, speed of passthrough_ll and of kvfs relative to ext4's
        rp=$(has pt && [[ "${SEC[$k.ext4]:-}" =~ ^[0-9.]+$ && "${SEC[$k.pt]:-}" =~ ^[0-9.]+$ ]] &&
            awk -v e="${SEC[$k.ext4]}" -v x="${SEC[$k.pt]}" 'BEGIN { print e / x }' || echo NaN)
        rk=$(has kvfs && [[ "${SEC[$k.ext4]:-}" =~ ^[0-9.]+$ && "${SEC[$k.kvfs]:-}" =~ ^[0-9.]+$ ]] &&
            awk -v e="${SEC[$k.ext4]}" -v x="${SEC[$k.kvfs]}" 'BEGIN { print e / x }' || echo NaN)
        printf '"%s" %s %s\n' "${SHORT[$k]}" "$rp" "$rk"
    done >"$W/plot.dat"
    if timeout 60 gnuplot -e "datafile='$W/plot.dat'; outfile='$PNG'; subtitle='$(date -u +%Y-%m-%d), $(nproc) cores, ext4 on $(df --output=source "$W" | tail -1)'" \
        "$ROOT/bench/fs_plot.gp" 2>"$W/plot.err"; then
        log "plot: $PNG"
    else
        warn "gnuplot failed: $(head -3 "$W/plot.err")"
    fi
elif ! has ext4 || ! { has pt || has kvfs; }; then
    log "no plot: it needs ext4 and at least one FUSE target"
else
    log "no gnuplot (apt-get install gnuplot-nox): no plot"
fi

if [ $DOCS = 1 ]; then
    DOC=$ROOT/docs/benchmarks.md
    if grep -q '<!-- fs-results:begin -->' "$DOC" && grep -q '<!-- fs-results:end -->' "$DOC"; then
        awk -v res="$MD" '/<!-- fs-results:begin -->/ { print; while ((getline l < res) > 0) print l; skip = 1; next }
                          /<!-- fs-results:end -->/ { skip = 0 } !skip { print }' "$DOC" >"$DOC.tmp" && mv "$DOC.tmp" "$DOC"
        [ -f "$PNG" ] && cp "$PNG" "$ROOT/docs/fs-bench.png"
        log "updated docs/benchmarks.md (Filesystem results) and docs/fs-bench.png"
    else
        warn "docs/benchmarks.md has no fs-results markers: not updated"
    fi
fi
