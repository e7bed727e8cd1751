# kvfs — build, test, benchmark, install.
#   make            build the engine library, the kvfs command and the tests (normal build in build/)
#   make test       unit tests (under ASan+UBSan, build-san/; the multi-threaded ones also under TSan, build-tsan/)
#                   and bats tests on a real mount; prints "N passed, N failed"
#   make bench      engine and filesystem benchmarks against LevelDB, RocksDB, passthrough_ll and ext4
#   make install    PREFIX=/usr/local DESTDIR=
# Add a source file and it is built: engine/*.c -> libkvengine, fs/*.c + mount/*.c -> kvfs, tests/unit/test_*.c ->
# one test program each.

CC      ?= cc
PREFIX  ?= /usr/local
SAN     ?= 0
TSAN    ?= 0
BUILD   := $(if $(filter 1,$(SAN)),build-san,$(if $(filter 1,$(TSAN)),build-tsan,build))
FUSE_CFLAGS := $(shell pkg-config --cflags fuse3 2>/dev/null)
FUSE_LIBS   := $(shell pkg-config --libs fuse3 2>/dev/null || echo -lfuse3)
CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -Wall -Wextra -Werror -g -pthread -Iengine -Ifs -Imount
ifeq ($(SAN),1)
CFLAGS_OPT := -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
LDFLAGS_SAN := -fsanitize=address,undefined
else ifeq ($(TSAN),1)
CFLAGS_OPT := -O1 -fno-omit-frame-pointer -fsanitize=thread
LDFLAGS_SAN := -fsanitize=thread
else
CFLAGS_OPT := -O2
LDFLAGS_SAN :=
endif
CFLAGS_ALL := $(CFLAGS_BASE) $(CFLAGS_OPT) $(FUSE_CFLAGS) $(CFLAGS)
LIBS := -lxxhash -lpthread
TEST_LIBS := $(LIBS) -lz   # zlib: the reference codec the block codec's tests compare against

ENGINE_SRC := $(wildcard engine/*.c)
FS_SRC     := $(wildcard fs/*.c)
MOUNT_SRC  := $(wildcard mount/*.c)
TEST_SRC   := $(wildcard tests/unit/test_*.c)
TEST_LIB_SRC := $(filter-out $(TEST_SRC),$(wildcard tests/unit/*.c))

ENGINE_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/%.o)
ENGINE_PIC := $(ENGINE_SRC:%.c=$(BUILD)/pic/%.o)
FS_OBJ     := $(FS_SRC:%.c=$(BUILD)/%.o)
MOUNT_OBJ  := $(MOUNT_SRC:%.c=$(BUILD)/%.o)
TEST_LIB_OBJ := $(TEST_LIB_SRC:%.c=$(BUILD)/%.o)
TEST_BIN   := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
FUZZ_SRC   := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_TARGETS := $(FUZZ_SRC:tests/fuzz/fuzz_%.c=%)
FUZZ_REPLAY := $(FUZZ_TARGETS:%=$(BUILD)/tests/test_fuzz_%)

LIB_A  := $(BUILD)/libkvengine.a
LIB_FS := $(BUILD)/libkvfs-fs.a
LIB_TOOLS := $(BUILD)/libkvfs-tools.a
LIB_SO := $(BUILD)/libkvengine.so
KVFS   := $(BUILD)/kvfs

.PHONY: all test unit bats bench install clean san tsan fuzz fuzz-run fuzz-seeds
all: $(LIB_A) $(LIB_SO) $(if $(MOUNT_SRC),$(KVFS)) $(TEST_BIN) $(FUZZ_REPLAY)

$(BUILD)/%.o: %.c $(wildcard engine/*.h fs/*.h mount/*.h tests/unit/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

$(BUILD)/pic/%.o: %.c $(wildcard engine/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -fPIC -fvisibility=default -c $< -o $@

$(LIB_A): $(ENGINE_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(LIB_SO): $(ENGINE_PIC)
	$(CC) -shared -Wl,-soname,libkvengine.so.0 $(LDFLAGS_SAN) -o $@ $^ $(LIBS)

$(LIB_FS): $(FS_OBJ)
	@rm -f $@
	ar rcs $@ $^

# The kvfs command's code but main(): the tools, the control socket and the mount daemon, for the test programs and
# the fuzz harnesses.
$(LIB_TOOLS): $(filter-out $(BUILD)/mount/main.o,$(MOUNT_OBJ))
	@rm -f $@
	ar rcs $@ $^

$(KVFS): $(MOUNT_OBJ) $(LIB_FS) $(LIB_A)
	$(CC) $(LDFLAGS_SAN) -o $@ $(MOUNT_OBJ) $(LIB_FS) $(LIB_A) $(FUSE_LIBS) $(LIBS)

# Test programs link the tools, fs and engine archives: only the objects a test uses are pulled in.
$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(TEST_LIB_OBJ) $(LIB_TOOLS) $(LIB_FS) $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) -o $@ $< $(TEST_LIB_OBJ) $(LIB_TOOLS) $(LIB_FS) $(LIB_A) $(FUSE_LIBS) $(TEST_LIBS)

# The fuzz harnesses (tests/fuzz/fuzz_*.c) replayed over their corpus by a plain main() (tests/fuzz/driver.c): unit
# tests like the others, built by the normal compiler.
$(BUILD)/tests/test_fuzz_%: $(BUILD)/tests/fuzz/fuzz_%.o $(BUILD)/tests/fuzz/driver.o $(LIB_TOOLS) $(LIB_FS) $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) -o $@ $< $(BUILD)/tests/fuzz/driver.o $(LIB_TOOLS) $(LIB_FS) $(LIB_A) $(FUSE_LIBS) $(TEST_LIBS)

$(BUILD)/tests/fuzz/%.o: tests/fuzz/%.c $(wildcard engine/*.h fs/*.h mount/*.h tests/fuzz/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

# make fuzz-seeds: (re)write the seed inputs (seed-*) of tests/fuzz/corpus/ from the engine's own writers.
$(BUILD)/tests/fuzz/mkseeds: $(BUILD)/tests/fuzz/mkseeds.o $(LIB_TOOLS) $(LIB_FS) $(LIB_A)
	$(CC) $(LDFLAGS_SAN) -o $@ $< $(LIB_TOOLS) $(LIB_FS) $(LIB_A) $(FUSE_LIBS) $(TEST_LIBS)

fuzz-seeds: $(BUILD)/tests/fuzz/mkseeds
	$(BUILD)/tests/fuzz/mkseeds

# libFuzzer builds (clang): make fuzz builds build-fuzz/fuzz_<target>; make fuzz-run runs each in turn for
# FUZZ_SECONDS, starting from tests/fuzz/corpus/<target>/ and keeping what it finds in build-fuzz/corpus/<target>/
# (crashes in build-fuzz/artifacts/). FUZZ_TARGET=inflate runs one. (clang warns of {.a = x} initializers leaving
# fields zero, which the code means: that warning is off.)
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_TARGET  ?= $(FUZZ_TARGETS)
FUZZ_SANS    := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS  := $(CFLAGS_BASE) -Wno-missing-field-initializers -O1 -fno-omit-frame-pointer $(FUZZ_SANS) -fsanitize=fuzzer-no-link $(FUSE_CFLAGS)
FUZZ_ENGINE_OBJ := $(ENGINE_SRC:%.c=build-fuzz/%.o)
FUZZ_FS_OBJ     := $(FS_SRC:%.c=build-fuzz/%.o)
FUZZ_TOOLS_OBJ  := $(filter-out build-fuzz/mount/main.o,$(MOUNT_SRC:%.c=build-fuzz/%.o))

build-fuzz/%.o: %.c $(wildcard engine/*.h fs/*.h mount/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

build-fuzz/tests/fuzz/%.o: tests/fuzz/%.c $(wildcard engine/*.h fs/*.h mount/*.h tests/fuzz/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

build-fuzz/libkvengine.a: $(FUZZ_ENGINE_OBJ)
	@rm -f $@
	ar rcs $@ $^

build-fuzz/libkvfs-fs.a: $(FUZZ_FS_OBJ)
	@rm -f $@
	ar rcs $@ $^

build-fuzz/libkvfs-tools.a: $(FUZZ_TOOLS_OBJ)
	@rm -f $@
	ar rcs $@ $^

build-fuzz/fuzz_%: build-fuzz/tests/fuzz/fuzz_%.o build-fuzz/libkvfs-tools.a build-fuzz/libkvfs-fs.a build-fuzz/libkvengine.a
	$(FUZZ_CC) $(FUZZ_SANS) -fsanitize=fuzzer -o $@ $^ $(FUSE_LIBS) $(TEST_LIBS)

fuzz: $(FUZZ_TARGETS:%=build-fuzz/fuzz_%)

.SECONDARY: $(FUZZ_TARGETS:%=build-fuzz/tests/fuzz/fuzz_%.o)  # keep them: a rebuild then relinks only

fuzz-run: fuzz
	@for t in $(FUZZ_TARGET); do \
	    mkdir -p build-fuzz/corpus/$$t build-fuzz/artifacts/$$t; \
	    echo "=== fuzz_$$t, $(FUZZ_SECONDS) s"; \
	    base=/dev/shm; [ -w $$base ] || base=$${TMPDIR:-/tmp}; \
	    tmp=$$(mktemp -d "$$base/kvfs-fuzz-run.XXXXXX"); \
	    KVFS_FUZZ_TMP=$$tmp nice -n 19 build-fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
	        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix=build-fuzz/artifacts/$$t/ \
	        build-fuzz/corpus/$$t tests/fuzz/corpus/$$t; \
	    rc=$$?; rm -rf "$$tmp"; [ $$rc -eq 0 ] || exit 1; \
	done

san:
	$(MAKE) SAN=1 all

# The whole suite: unit tests under sanitizers (ASan+UBSan; the multi-threaded ones under TSan too), bats tests
# against the normal build.
test:
	$(MAKE) all
	$(MAKE) SAN=1 all
	$(MAKE) TSAN=1 tsan
	bash tests/run.sh

# The test programs that tests/run.sh runs under ThreadSanitizer (build-tsan/).
TSAN_TESTS := test_db test_sst test_cache test_memtable test_faults test_blob test_crash test_env test_fs_ops
tsan:
	$(MAKE) TSAN=1 $(TSAN_TESTS:%=build-tsan/tests/%)

unit: san
	KVFS_SKIP_BATS=1 bash tests/run.sh

bats: all
	KVFS_SKIP_UNIT=1 bash tests/run.sh

bench: all
	$(MAKE) -C bench

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include/kvfs \
	    $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)/sbin \
	    $(DESTDIR)$(PREFIX)/share/bash-completion/completions
	install -m 0755 $(KVFS) $(DESTDIR)$(PREFIX)/bin/kvfs
	install -m 0644 $(LIB_A) $(DESTDIR)$(PREFIX)/lib/libkvengine.a
	install -m 0755 $(LIB_SO) $(DESTDIR)$(PREFIX)/lib/libkvengine.so.0
	ln -sf libkvengine.so.0 $(DESTDIR)$(PREFIX)/lib/libkvengine.so
	install -m 0644 engine/kv.h $(DESTDIR)$(PREFIX)/include/kvfs/kv.h
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(shell sed -n 's/#define KV_VERSION_STRING "\(.*\)"/\1/p' engine/kv.h)|g' \
	    mount/kvfs.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/kvfs.pc
	[ ! -f docs/kvfs.1 ] || install -m 0644 docs/kvfs.1 $(DESTDIR)$(PREFIX)/share/man/man1/kvfs.1
	[ ! -f mount/mount.kvfs ] || install -m 0755 mount/mount.kvfs $(DESTDIR)/sbin/mount.fuse.kvfs
	[ ! -f mount/kvfs.bash-completion ] || install -m 0644 mount/kvfs.bash-completion \
	    $(DESTDIR)$(PREFIX)/share/bash-completion/completions/kvfs

clean:
	rm -rf build build-san build-tsan build-fuzz
