#!/usr/bin/env bats
# tools_install.bats — `make install` with DESTDIR and PREFIX, and a small C program that embeds the installed
# engine through pkg-config (shared and static), interoperating with the installed kvfs command.

load helpers.bash-tools

setup_file() {
    bats_require_minimum_version 1.5.0
    export DEST
    DEST="$(mktemp -d "${TMPDIR:-/tmp}/kvfs-install.XXXXXX")"
    # `install` depends on `all`, which the suite has built already: this only copies files
    timeout 900 make -s -C "$KVFS_ROOT" install DESTDIR="$DEST" PREFIX=/usr > "$DEST.log" 2>&1 ||
        { cat "$DEST.log" >&2; return 1; }
}

teardown_file() {
    rm -rf "$DEST" "$DEST.log"
}

setup() { tools_setup; }
teardown() { tools_teardown; }

@test "make install puts everything under DESTDIR/PREFIX" {
    [ -x "$DEST/usr/bin/kvfs" ]
    [ -f "$DEST/usr/lib/libkvengine.a" ]
    [ -f "$DEST/usr/lib/libkvengine.so.0" ]
    [ -L "$DEST/usr/lib/libkvengine.so" ]
    [ -f "$DEST/usr/include/kvfs/kv.h" ]
    [ -f "$DEST/usr/lib/pkgconfig/kvfs.pc" ]
    [ -f "$DEST/usr/share/man/man1/kvfs.1" ]
    [ -f "$DEST/usr/share/bash-completion/completions/kvfs" ]
    [ -x "$DEST/sbin/mount.fuse.kvfs" ]
    grep -q '^prefix=/usr$' "$DEST/usr/lib/pkgconfig/kvfs.pc"
    ver=$("$DEST/usr/bin/kvfs" --version)
    grep -q "^Version: ${ver#kvfs }$" "$DEST/usr/lib/pkgconfig/kvfs.pc"
}

@test "the man page renders and names every command" {
    command -v man >/dev/null || command -v groff >/dev/null || skip "neither man nor groff is installed"
    if command -v man >/dev/null; then
        out=$(MANWIDTH=100 man -l "$DEST/usr/share/man/man1/kvfs.1" 2>/dev/null | col -b 2>/dev/null || true)
    fi
    [ -n "${out:-}" ] || out=$(groff -man -Tutf8 "$DEST/usr/share/man/man1/kvfs.1" 2>/dev/null)
    for c in mount serve put get del batch scan resolve short stats compact check checkpoint changes prune dump; do
        grep -q "kvfs $c" <<<"$out" || { echo "man page lacks kvfs $c"; false; }
    done
    grep -q "allow_other" <<<"$out"
}

@test "bash completion completes subcommands and options" {
    run bash -c "source '$DEST/usr/share/bash-completion/completions/kvfs'
        COMP_WORDS=(kvfs sc); COMP_CWORD=1; _kvfs; echo \"\${COMPREPLY[*]}\"
        COMP_WORDS=(kvfs scan /tmp --ke); COMP_CWORD=3; _kvfs; echo \"\${COMPREPLY[*]}\""
    [ "$status" -eq 0 ]
    [ "${lines[0]}" = scan ]
    [ "${lines[1]}" = --keys-only ]
}

write_program() {
    cat > "$T/embed.c" <<'EOF'
/* A program embedding the kvfs engine: writes a batch, reads it back, scans it. */
#include <kv.h>
#include <stdio.h>
#include <string.h>

static int count;
static int on_key(void *ctx, const void *key, size_t klen, const void *val, uint64_t vlen) {
    (void)ctx;
    printf("%.*s=%.*s\n", (int)klen, (const char *)key, (int)vlen, (const char *)val);
    count++;
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    kv_options o;
    kv_options_init(&o);
    kv_db *db;
    int rc = kv_open(argv[1], &o, &db);
    if (rc) { fprintf(stderr, "open: %s\n", kv_strerror(rc)); return 1; }
    kv_batch *b;
    kv_batch_new(&b);
    kv_batch_put(b, "embedded/a", 10, "1", 1);
    kv_batch_put(b, "embedded/b", 10, "2", 1);
    uint64_t seq = 0;
    if ((rc = kv_write(db, b, KV_SYNC, &seq))) { fprintf(stderr, "write: %s\n", kv_strerror(rc)); return 1; }
    kv_batch_free(b);
    kv_buf v = {0};
    if ((rc = kv_get(db, NULL, "embedded/a", 10, &v)) || v.len != 1 || memcmp(v.data, "1", 1)) return 1;
    kv_buf_free(&v);
    kv_prefix_scan(db, NULL, "embedded/", 9, 0, true, on_key, NULL);
    printf("version %s, %d keys\n", KV_VERSION_STRING, count);
    return kv_close(db) == KV_OK ? 0 : 1;
}
EOF
}

@test "a C program builds against the installed library with pkg-config (shared)" {
    write_program
    export PKG_CONFIG_SYSROOT_DIR="$DEST" PKG_CONFIG_PATH="$DEST/usr/lib/pkgconfig"
    flags=$(pkg-config --cflags --libs kvfs)
    [[ "$flags" == *"-I$DEST/usr/include/kvfs"* ]]
    [[ "$flags" == *"-lkvengine"* ]]
    # shellcheck disable=SC2086
    cc -std=c11 -Wall -Werror -o "$T/embed" "$T/embed.c" $flags
    LD_LIBRARY_PATH="$DEST/usr/lib" run "$T/embed" "$T/store"
    [ "$status" -eq 0 ]
    [ "${lines[0]}" = "embedded/a=1" ]
    [ "${lines[2]}" = "version $("$DEST/usr/bin/kvfs" --version | cut -d' ' -f2), 2 keys" ]
    # the program really uses the shared library
    LD_LIBRARY_PATH="$DEST/usr/lib" ldd "$T/embed" | grep -q "libkvengine.so.0 => $DEST/usr/lib/libkvengine.so.0"
    # the installed kvfs reads what the program wrote
    [ "$("$DEST/usr/bin/kvfs" get "$T/store" embedded/b)" = 2 ]
}

@test "a C program links the installed library statically with pkg-config --static" {
    write_program
    export PKG_CONFIG_SYSROOT_DIR="$DEST" PKG_CONFIG_PATH="$DEST/usr/lib/pkgconfig"
    libs=$(pkg-config --static --libs kvfs)
    [[ "$libs" != *"-lz"* ]] # the engine has its own block codec: no zlib
    [[ "$libs" == *"-lxxhash"* ]]
    [[ "$libs" == *"-lpthread"* ]]
    # prefer the archive: -l:libkvengine.a instead of -lkvengine
    # shellcheck disable=SC2086
    cc -std=c11 -Wall -Werror -o "$T/embed-static" "$T/embed.c" $(pkg-config --cflags kvfs) \
        ${libs/-lkvengine/-l:libkvengine.a}
    ! ldd "$T/embed-static" | grep -q libkvengine
    run "$T/embed-static" "$T/store2"
    [ "$status" -eq 0 ]
    [ "${lines[1]}" = "embedded/b=2" ]
}

@test "scripts/mount.sh, the README's first command, builds and mounts the default store in a home without ~/.local/share" {
    mkdir -p "$T/home"
    HOME="$T/home" run timeout -k 5 600 bash "$KVFS_ROOT/scripts/mount.sh" 3>&-
    MOUNTS+=("$T/home/kvfs|$T/home/.local/share/kvfs")
    echo "$output"
    [ "$status" -eq 0 ]
    grep -q " $T/home/kvfs fuse" /proc/mounts
    [ "$(stat -c %a "$T/home/.local/share/kvfs")" = 700 ]
    mkdir -p "$T/home/kvfs/users/alice"
    echo alice@example.com > "$T/home/kvfs/users/alice/email"
    [ "$("$KVFS" get "$T/home/.local/share/kvfs" users/alice/email)" = alice@example.com ]
}
