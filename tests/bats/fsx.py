#!/usr/bin/env python3
"""fsx.py — a randomized file-data exerciser in the manner of the classic fsx, for tests/bats/fs_fsx.bats.

Usage: fsx.py MOUNT REFDIR [--seed N] [--ops N] [--dir NAME] [--remount-cmd CMD] [--crash-cmd CMD] [--remount-p P]
       [--crash-p P] [--full-every N] [--max-size BYTES] [--max-write BYTES] [--files N] [--label TEXT]

Every operation is done twice: on files in MOUNT/NAME (a kvfs mount) and on the same files in REFDIR/NAME (a local
file system), through descriptors opened the same way on both sides, so that renames over open files and unlinks
of open files behave the same on both. The operations: pwrite (1 byte to a few MiB, at random offsets, past the end
making holes), sequential streams of writes, pwritev, O_APPEND writes, pread, O_DIRECT reads (the daemon's bytes,
not the kernel's cached pages), ftruncate and truncate (up, down, to 0), fallocate (mode 0 and KEEP_SIZE; holes
punched and ranges zeroed, with and without KEEP_SIZE; collapsing and inserting ranges must say EOPNOTSUPP),
lseek's SEEK_DATA and SEEK_HOLE (what they report as a hole must read as zeros), copy_file_range (the daemon's
own: large ranges share the source's stored records), fsync and fdatasync, mmap reads, MAP_SHARED writes with
msync, opens (with O_CREAT, O_APPEND, O_TRUNC) and closes of several descriptors per file, rename of a file over
another while both are open, unlink while open, rename of the subdirectory that holds half of the files (with their
open descriptors), and dropping the kernel's cached pages (POSIX_FADV_DONTNEED).

After each operation the listings, the sizes of every file (stat) and every open descriptor (fstat), and the full
contents of the file the operation touched are compared; every --full-every operations (and after a remount or a
crash, and at the end) the full contents of everything. Contents are read through an open descriptor when there is
one (a close would flush the file, which would spoil the crash check). The written bytes say which operation wrote
them (the byte at file offset p from operation k is (p % 251 + k) % 255 + 1, never 0, so holes show), which the
failure report decodes.

Remount and crash: CMD is run with sh -c (the bats file passes fs_remount, or fs_crash then fs_mount). Before a
remount every descriptor is closed (umount needs it). Before a crash some files are fsync'ed; afterwards the files
fsync'ed or closed since their last change must match exactly, and the others are taken as the mount shows them
(docs/mount.md: after kill -9, what was fsync'ed or closed is intact).

On a failure it prints the seed, the operation number and the tail of the operation log, and exits 1.
"""
import argparse
import ctypes
import errno
import mmap
import os
import random
import subprocess
import sys
import time

FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
FALLOC_FL_ZERO_RANGE = 0x10
PAGE = mmap.PAGESIZE

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
libc.fallocate.restype = ctypes.c_int


def fallocate(fd, mode, off, length):
    if libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class Fail(Exception):
    pass


# The byte pattern: BASE[i] = i % 251; an operation's bytes are BASE[off % 251 : ...] mapped by its table.
BASE = bytes(i % 251 for i in range(251)) * ((8 << 20) // 251 + 2)


def pattern(off, n, op):
    out = bytearray()
    table = bytes(((v + op) % 255) + 1 for v in range(256))
    while n > 0:
        s = off % 251
        k = min(n, len(BASE) - 251)
        out += BASE[s:s + k].translate(table)
        off += k
        n -= k
    return bytes(out)


def who_wrote(pos, byte):
    """The operation numbers (mod 255) whose pattern has this byte at this offset; 0 is a hole."""
    if byte == 0:
        return "hole/zero"
    return "op ≡ %d (mod 255)" % ((byte - 1 - pos % 251) % 255)


class Inode:
    n = 0

    def __init__(self):
        Inode.n += 1
        self.id = Inode.n
        self.dirty = False   # changed since the last fsync or close (matters for a crash only)

    def __repr__(self):
        return "i%d" % self.id


class Fd:
    def __init__(self, mfd, rfd, ino, append, name):
        self.mfd, self.rfd, self.ino, self.append, self.name = mfd, rfd, ino, append, name

    def __repr__(self):
        return "fd(m%d r%d %r %s%s)" % (self.mfd, self.rfd, self.ino, self.name, " append" if self.append else "")


class Fsx:
    def __init__(self, a):
        self.a = a
        self.mnt, self.ref = a.mount, a.ref
        self.rng = random.Random(a.seed)
        self.names = {}     # name -> Inode (files that exist, on both sides)
        self.seek_holes_seen = 0  # op_seek_hole answers that found a hole before the end
        self.fds = []
        self.log = []
        self.opno = 0
        self.mmap_ok = True
        self.dir = "d"
        self.stats = {}

    # ---- helpers ----------------------------------------------------------------------------------------------------

    def note(self, s):
        self.log.append("%d: %s" % (self.opno, s))

    def fail(self, msg):
        raise Fail(msg)

    def both(self, what, fr, fm):
        """Run fr (on the reference) and fm (on the mount); both must succeed, or fail with the same errno."""
        er = em = None
        rr = rm = None
        try:
            rr = fr()
        except OSError as e:
            er = e
        try:
            rm = fm()
        except OSError as e:
            em = e
        if (er is None) != (em is None) or (er and er.errno != em.errno):
            self.fail("%s: reference %s, mount %s" % (what, er or ("-> %r" % (rr,)), em or ("-> %r" % (rm,))))
        return er, rr, rm

    # Odd-numbered files live in a subdirectory, which op_rename_dir moves between "d" and "e" (names say "D/").
    def mpath(self, name):
        return os.path.join(self.mnt, name.replace("D/", self.dir + "/"))

    def rpath(self, name):
        return os.path.join(self.ref, name.replace("D/", self.dir + "/"))

    def check_listing(self, when=""):
        for sub in ("", self.dir):
            ml = sorted(os.listdir(os.path.join(self.mnt, sub)))
            rl = sorted(os.listdir(os.path.join(self.ref, sub)))
            if ml != rl:
                self.fail("%slisting of %s/ differs: reference %s, mount %s" % (when, sub, rl, ml))

    def read_all_fd(self, fd, size):
        out = bytearray()
        while len(out) < size:
            b = os.pread(fd, min(size - len(out), 4 << 20), len(out))
            if not b:
                break
            out += b
        return bytes(out)

    def read_all_path(self, p):
        with open(p, "rb") as f:
            return f.read()

    def compare_bytes(self, what, exp, got, base=0):
        if exp == got:
            return
        n = min(len(exp), len(got))
        i = next((j for j in range(n) if exp[j] != got[j]), n)
        j = i
        while j < n and exp[j] != got[j]:
            j += 1
        pos = base + i
        msg = "%s: contents differ: reference %d bytes, mount %d bytes; first difference at offset %d" % (
            what, len(exp), len(got), pos)
        if i < n:
            msg += " (differing run of %d bytes up to %d)\n  reference %s  [%s]\n  mount     %s  [%s]" % (
                j - i, base + j, exp[i:i + 16].hex(), who_wrote(pos, exp[i]), got[i:i + 16].hex(),
                who_wrote(pos, got[i]))
        self.fail(msg)

    def fd_for(self, ino=None, append=None):
        c = [f for f in self.fds if (ino is None or f.ino is ino) and (append is None or f.append == append)]
        return self.rng.choice(c) if c else None

    def check_sizes(self):
        self.check_listing()
        for name in self.names:
            rs, ms = os.stat(self.rpath(name)).st_size, os.stat(self.mpath(name)).st_size
            if rs != ms:
                self.fail("stat %s: st_size %d, reference %d" % (name, ms, rs))
        for f in self.fds:
            rs, ms = os.fstat(f.rfd).st_size, os.fstat(f.mfd).st_size
            if rs != ms:
                self.fail("fstat %r: st_size %d, reference %d" % (f, ms, rs))

    def check_inode(self, ino):
        """Full contents of one file, through one of its descriptors (a close would flush it), else by its name."""
        f = self.fd_for(ino)
        if f:
            size = os.fstat(f.rfd).st_size
            self.compare_bytes("%r (pread through %r)" % (ino, f), self.read_all_fd(f.rfd, size),
                               self.read_all_fd(f.mfd, size + 1))
            return
        for name, i in self.names.items():
            if i is ino:
                self.compare_bytes("%s (read by name)" % name, self.read_all_path(self.rpath(name)),
                                   self.read_all_path(self.mpath(name)))
                return

    def check_all(self):
        self.check_sizes()
        seen = set()
        for ino in list(self.names.values()) + [f.ino for f in self.fds]:
            if ino.id not in seen:
                seen.add(ino.id)
                self.check_inode(ino)

    # ---- operations -------------------------------------------------------------------------------------------------

    def pick_name(self):
        i = self.rng.randrange(self.a.files)
        return "%sf%d" % ("D/" if i % 2 else "", i)

    def op_open(self):
        name = self.pick_name()
        append = self.rng.random() < 0.25
        flags = os.O_RDWR | os.O_CREAT
        if append:
            flags |= os.O_APPEND
        trunc = name in self.names and self.rng.random() < 0.1
        if trunc:
            flags |= os.O_TRUNC
        if len(self.fds) >= self.a.max_fds:
            self.op_close()
        self.note("open %s%s%s" % (name, " O_APPEND" if append else "", " O_TRUNC" if trunc else ""))
        rfd = os.open(self.rpath(name), flags, 0o644)
        try:
            mfd = os.open(self.mpath(name), flags, 0o644)
        except OSError as e:
            os.close(rfd)
            self.fail("open %s: %s" % (name, e))
        ino = self.names.get(name)
        if ino is None:
            ino = self.names[name] = Inode()
        if trunc:
            ino.dirty = True
        f = Fd(mfd, rfd, ino, append, name)
        self.fds.append(f)
        return f

    def close_fd(self, f):
        self.fds.remove(f)
        os.close(f.rfd)
        try:
            os.close(f.mfd)
        except OSError as e:
            self.fail("close %r: %s" % (f, e))
        f.ino.dirty = False   # close writes the file's pages and buffer, whichever descriptor dirtied them

    def op_close(self):
        f = self.fd_for()
        if not f:
            return None
        self.note("close %r" % f)
        self.close_fd(f)
        return f.ino

    def any_fd(self, append=None):
        f = self.fd_for(append=append)
        if not f or self.rng.random() < 0.1:
            f = self.op_open()
            if append is not None and f.append != append:
                return self.any_fd(append)
        return f

    def rand_len(self):
        r, top = self.rng.random(), self.a.max_write
        if r < 0.6:
            return self.rng.randint(1, min(8192, top))
        if r < 0.85:
            return self.rng.randint(1, min(256 << 10, top))
        return self.rng.randint(min(256 << 10, top), top)

    def op_write(self):
        f = self.any_fd(append=False)
        size = os.fstat(f.rfd).st_size
        r = self.rng.random()
        if r < 0.7:
            off = self.rng.randint(0, size)
        elif r < 0.9:
            off = size + self.rng.randint(1, 256 << 10)   # a hole
        else:
            off = self.rng.randrange(self.a.max_size)
        n = self.rand_len()
        off = min(off, self.a.max_size - 1)
        n = max(1, min(n, self.a.max_size - off))
        self.note("pwrite %r off %d len %d (size %d)" % (f, off, n, size))
        data = pattern(off, n, self.opno)
        _, rr, rm = self.both("pwrite", lambda: os.pwrite(f.rfd, data, off), lambda: os.pwrite(f.mfd, data, off))
        if rr != rm:
            self.fail("pwrite returned %r, reference %r" % (rm, rr))
        f.ino.dirty = True
        return f.ino

    def op_stream(self):
        """Sequential writes through one descriptor, as cp or a log writer does (the daemon merges them in its
        write buffer when the kernel's writeback cache is off)."""
        f = self.any_fd(append=False)
        size = os.fstat(f.rfd).st_size
        off = size if self.rng.random() < 0.5 else self.rng.randint(0, size)
        count = self.rng.randint(2, 64)
        chunk = self.rng.choice([512, 4096, 10000, 65536, 200000])
        self.note("stream %r from %d: %d writes of up to %d (size %d)" % (f, off, count, chunk, size))
        for _ in range(count):
            n = min(self.rng.randint(1, chunk), self.a.max_size - off)
            if n <= 0:
                break
            data = pattern(off, n, self.opno)
            _, rr, rm = self.both("write", lambda: os.pwrite(f.rfd, data, off), lambda: os.pwrite(f.mfd, data, off))
            if rr != rm:
                self.fail("pwrite off %d returned %r, reference %r" % (off, rm, rr))
            off += n
        f.ino.dirty = True
        return f.ino

    def op_writev(self):
        """One pwritev of several pieces (one WRITE request or more, as the kernel builds them)."""
        f = self.any_fd(append=False)
        size = os.fstat(f.rfd).st_size
        off = min(self.rng.randint(0, size + 8192), self.a.max_size - 1)
        lens = [self.rng.randint(1, 20000) for _ in range(self.rng.randint(2, 8))]
        data = pattern(off, min(sum(lens), self.a.max_size - off), self.opno)
        bufs, i = [], 0
        for n in lens:
            if i < len(data):
                bufs.append(data[i:i + n])
                i += n
        self.note("pwritev %r off %d pieces %s (size %d)" % (f, off, [len(b) for b in bufs], size))
        _, rr, rm = self.both("pwritev", lambda: os.pwritev(f.rfd, bufs, off), lambda: os.pwritev(f.mfd, bufs, off))
        if rr != rm:
            self.fail("pwritev returned %r, reference %r" % (rm, rr))
        f.ino.dirty = True
        return f.ino

    def op_copy_range(self):
        """copy_file_range from one descriptor to another (kvfs's own: a large range shares the source's stored
        records, after the kernel wrote back both files' dirty pages in the ranges); the source may be the same file,
        at a range that does not overlap."""
        dst = self.any_fd(append=False)
        src = self.fd_for()   # after dst: opening dst may close another descriptor
        ssize, dsize = os.fstat(src.rfd).st_size, os.fstat(dst.rfd).st_size
        if ssize == 0:
            return None
        soff = self.rng.randrange(ssize)
        n = self.rng.randint(1, min(ssize - soff, 1 << 20))
        doff = min(self.rng.randint(0, dsize + 65536), self.a.max_size - n)
        if doff < 0 or (src.ino is dst.ino and soff < doff + n and doff < soff + n):
            return None
        self.note("copy_file_range %r off %d -> %r off %d len %d (sizes %d, %d)" % (src, soff, dst, doff, n, ssize,
                                                                                   dsize))
        done = 0
        while done < n:
            k = os.copy_file_range(src.mfd, dst.mfd, n - done, soff + done, doff + done)
            if k <= 0:
                self.fail("copy_file_range returned %d after %d of %d bytes" % (k, done, n))
            data = os.pread(src.rfd, k, soff + done)
            if os.pwrite(dst.rfd, data, doff + done) != k:
                self.fail("reference pwrite short")
            done += k
        dst.ino.dirty = True
        return dst.ino

    def op_direct_read(self):
        """A read that bypasses the kernel's page cache (O_DIRECT): the daemon's bytes, not the kernel's copy."""
        names = [n for n, i in self.names.items()]
        if not names:
            return None
        name = self.rng.choice(sorted(names))
        size = os.stat(self.rpath(name)).st_size
        off = self.rng.randint(0, size + 100)
        n = self.rand_len()
        self.note("O_DIRECT pread %s off %d len %d (size %d)" % (name, off, n, size))
        with open(self.rpath(name), "rb") as r:
            exp = os.pread(r.fileno(), n, off)
        fd = os.open(self.mpath(name), os.O_RDONLY | os.O_DIRECT)
        try:
            got = os.pread(fd, n, off)
        finally:
            os.close(fd)   # a close writes the inode's dirty pages: the file stays dirty for the crash check
        self.compare_bytes("O_DIRECT pread %s off %d len %d" % (name, off, n), exp, got, off)
        return None

    def op_unsupported_fallocate(self):
        """Collapsing and inserting ranges say EOPNOTSUPP (docs/mapping.md) and change nothing."""
        f = self.any_fd()
        mode = self.rng.choice([0x08, 0x20])
        size = os.fstat(f.rfd).st_size
        self.note("fallocate %r mode %#x off 4096 len 4096 (size %d): EOPNOTSUPP" % (f, mode, size))
        try:
            fallocate(f.mfd, mode, 4096, 4096)
            self.fail("fallocate mode %#x succeeded" % mode)
        except OSError as e:
            if e.errno != errno.EOPNOTSUPP:
                self.fail("fallocate mode %#x: %s, not EOPNOTSUPP" % (mode, e))
        return f.ino

    def op_append(self):
        f = self.any_fd(append=True)
        size = os.fstat(f.rfd).st_size
        n = min(self.rand_len(), max(1, self.a.max_size - size))
        self.note("append %r len %d (size %d)" % (f, n, size))
        data = pattern(size, n, self.opno)
        _, rr, rm = self.both("append", lambda: os.write(f.rfd, data), lambda: os.write(f.mfd, data))
        if rr != rm:
            self.fail("write (O_APPEND) returned %r, reference %r" % (rm, rr))
        f.ino.dirty = True
        return f.ino

    def op_read(self):
        f = self.any_fd()
        size = os.fstat(f.rfd).st_size
        off = self.rng.randint(0, size + 4096)
        n = self.rand_len()
        self.note("pread %r off %d len %d (size %d)" % (f, off, n, size))
        exp = os.pread(f.rfd, n, off)
        got = os.pread(f.mfd, n, off)
        self.compare_bytes("pread %r off %d len %d" % (f, off, n), exp, got, off)
        return None

    def op_truncate(self):
        f = self.any_fd()
        size = os.fstat(f.rfd).st_size
        r = self.rng.random()
        if r < 0.15:
            new = 0
        elif r < 0.6:
            new = self.rng.randint(0, size)
        else:
            new = min(self.a.max_size, size + self.rng.randint(1, 2 << 20))
        by_path = f.name in self.names and self.names[f.name] is f.ino and self.rng.random() < 0.2
        self.note("%s %r to %d (size %d)" % ("truncate (path)" if by_path else "ftruncate", f, new, size))
        if by_path:
            self.both("truncate", lambda: os.truncate(self.rpath(f.name), new),
                      lambda: os.truncate(self.mpath(f.name), new))
        else:
            self.both("ftruncate", lambda: os.ftruncate(f.rfd, new), lambda: os.ftruncate(f.mfd, new))
        f.ino.dirty = True
        return f.ino

    def op_fallocate(self):
        f = self.any_fd()
        size = os.fstat(f.rfd).st_size
        mode = FALLOC_FL_KEEP_SIZE if self.rng.random() < 0.4 else 0
        off = self.rng.randint(0, size + (1 << 20))
        n = self.rng.randint(1, 2 << 20)
        if off + n > self.a.max_size:
            off, n = max(0, self.a.max_size - n), min(n, self.a.max_size)
        return self.fallocate_both(f, mode, off, n, size)

    def fallocate_both(self, f, mode, off, n, size):
        self.note("fallocate %r mode %#x off %d len %d (size %d)" % (f, mode, off, n, size))
        self.both("fallocate", lambda: fallocate(f.rfd, mode, off, n), lambda: fallocate(f.mfd, mode, off, n))
        f.ino.dirty = True
        return f.ino

    def op_zero_range(self):
        """A hole punched (always with KEEP_SIZE), or a range zeroed with or without KEEP_SIZE: often inside the
        file, over bytes the kernel may still have to write back, sometimes past its end."""
        f = self.any_fd()
        size = os.fstat(f.rfd).st_size
        mode = self.rng.choice([FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE,
                                FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE])
        off = self.rng.randint(0, size + (64 << 10)) if self.rng.random() < 0.8 else self.rng.randint(0, size + (1 << 20))
        n = self.rng.randint(1, self.rng.choice([4096, 256 << 10, 2 << 20]))
        if off + n > self.a.max_size:
            off, n = max(0, self.a.max_size - n), min(n, self.a.max_size)
        return self.fallocate_both(f, mode, off, n, size)

    def op_seek_hole(self):
        """lseek SEEK_DATA and SEEK_HOLE through a read-only open of a file: whatever they answer must be true of the
        reference's bytes: what lies between the offset and the next data is zeros, and so is the hole found, up to
        the data after it (ext4 finds other holes, so the answers themselves are not compared). With the file open
        for writing too, the mount has the kernel write back its pages first (docs/mapping.md)."""
        names = sorted(self.names)
        if not names:
            return None
        name = self.rng.choice(names)
        size = os.stat(self.rpath(name)).st_size
        off = self.rng.randint(0, size + 4096) if self.rng.random() < 0.3 else self.rng.randint(0, max(0, size - 1))
        self.note("lseek %s SEEK_DATA/SEEK_HOLE off %d (size %d)" % (name, off, size))
        with open(self.rpath(name), "rb") as r:
            ref = r.read()
        fd = os.open(self.mpath(name), os.O_RDONLY)
        got = {}

        def seek(what, whence, at):
            try:
                return os.lseek(fd, at, whence)
            except OSError as e:
                if e.errno != errno.ENXIO or (at < size and what == "hole"):
                    self.fail("lseek %s from %d (size %d): %s" % (what, at, size, e))
                return None
        try:
            for what, whence in (("data", os.SEEK_DATA), ("hole", os.SEEK_HOLE)):
                got[what] = seek(what, whence, off)
            after = seek("data", os.SEEK_DATA, got["hole"]) if got["hole"] is not None and got["hole"] < size else None
        finally:
            os.close(fd)
        if off >= size:
            if got["data"] is not None or got["hole"] is not None:
                self.fail("lseek from %d at or past the end (size %d) found %r" % (off, size, got))
            return None
        data_at = size if got["data"] is None else got["data"]
        hole_at = got["hole"]
        if not (off <= data_at <= size and off <= hole_at <= size and off in (data_at, hole_at)):
            self.fail("lseek from %d (size %d): data at %r, hole at %r" % (off, size, got["data"], hole_at))
        for start, end in ((off, data_at), (hole_at, size if after is None else after)):
            self.compare_bytes("the hole [%d, %d) lseek reported in %s" % (start, end, name), bytes(end - start),
                               ref[start:end], start)
        self.seek_holes_seen += hole_at < size
        return None

    def op_fsync(self):
        f = self.any_fd()
        data = self.rng.random() < 0.5
        self.note("%s %r" % ("fdatasync" if data else "fsync", f))
        sync = os.fdatasync if data else os.fsync
        self.both("fsync", lambda: sync(f.rfd), lambda: sync(f.mfd))
        f.ino.dirty = False
        return None

    def op_mmap_read(self):
        if not self.mmap_ok:
            return self.op_read()
        f = self.any_fd()
        size = os.fstat(f.rfd).st_size
        if size == 0:
            return None
        off = self.rng.randrange(0, size) // PAGE * PAGE
        n = self.rng.randint(1, min(size - off, 2 << 20))
        self.note("mmap read %r off %d len %d (size %d)" % (f, off, n, size))
        try:
            m = mmap.mmap(f.mfd, n, mmap.MAP_SHARED, mmap.PROT_READ, offset=off)
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.EOPNOTSUPP):
                self.mmap_ok = False
                print("fsx: the mount does not support mmap (%s): mmap operations skipped" % e)
                return None
            raise
        try:
            got = m[:n]
        finally:
            m.close()
        self.compare_bytes("mmap read %r off %d len %d" % (f, off, n), os.pread(f.rfd, n, off), got, off)
        return None

    def op_mmap_write(self):
        if not self.mmap_ok:
            return self.op_write()
        f = self.any_fd()
        size = os.fstat(f.rfd).st_size
        if size == 0:
            return None
        off = self.rng.randrange(0, size) // PAGE * PAGE
        n = self.rng.randint(1, min(size - off, 1 << 20))
        # the bytes go anywhere inside the mapping
        woff = self.rng.randrange(0, n)
        wn = self.rng.randint(1, n - woff)
        self.note("mmap write+msync %r map %d+%d write %d len %d (size %d)" % (f, off, n, off + woff, wn, size))
        data = pattern(off + woff, wn, self.opno)
        try:
            m = mmap.mmap(f.mfd, n, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=off)
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.EOPNOTSUPP):
                self.mmap_ok = False
                print("fsx: the mount does not support shared writable mmap (%s): mmap operations skipped" % e)
                return None
            raise
        try:
            m[woff:woff + wn] = data
            m.flush()   # msync(MS_SYNC)
        finally:
            m.close()
        # the same on the reference (a pwrite would append on an O_APPEND descriptor)
        r = mmap.mmap(f.rfd, n, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=off)
        try:
            r[woff:woff + wn] = data
            r.flush()
        finally:
            r.close()
        f.ino.dirty = False  # msync(MS_SYNC) made it durable
        return f.ino

    def op_rename(self):
        if not self.names:
            return None
        src = self.rng.choice(sorted(self.names))
        dst = self.pick_name()
        if dst == src:
            return None
        self.note("rename %s -> %s%s" % (src, dst, " (over an existing file)" if dst in self.names else ""))
        self.both("rename", lambda: os.rename(self.rpath(src), self.rpath(dst)),
                  lambda: os.rename(self.mpath(src), self.mpath(dst)))
        self.names[dst] = self.names.pop(src)
        return self.names[dst]

    def op_rename_dir(self):
        """Move the subdirectory, with the open files in it."""
        new = "e" if self.dir == "d" else "d"
        self.note("rename directory %s -> %s (%d descriptors open below it)" % (
            self.dir, new, len([f for f in self.fds if self.names.get(f.name) is f.ino and "D/" in f.name])))
        self.both("rename directory", lambda: os.rename(os.path.join(self.ref, self.dir), os.path.join(self.ref, new)),
                  lambda: os.rename(os.path.join(self.mnt, self.dir), os.path.join(self.mnt, new)))
        self.dir = new
        return None

    def op_unlink(self):
        if not self.names:
            return None
        name = self.rng.choice(sorted(self.names))
        self.note("unlink %s" % name)
        self.both("unlink", lambda: os.unlink(self.rpath(name)), lambda: os.unlink(self.mpath(name)))
        del self.names[name]
        return None

    def op_dropcache(self):
        """Drop the kernel's pages of a file, so that the next reads come from the daemon."""
        f = self.fd_for()
        if not f:
            return None
        self.note("fadvise DONTNEED %r" % f)
        os.posix_fadvise(f.mfd, 0, 0, os.POSIX_FADV_DONTNEED)
        return f.ino

    def close_all(self):
        for f in list(self.fds):
            self.close_fd(f)

    def op_remount(self):
        self.note("close all and remount")
        self.close_all()
        self.run(self.a.remount_cmd, "remount")
        self.check_all()

    def op_crash(self):
        synced = []
        for name, ino in sorted(self.names.items()):
            if self.rng.random() < 0.6:
                f = self.fd_for(ino)
                if f:
                    os.fsync(f.mfd)
                    os.fsync(f.rfd)
                else:
                    fd = os.open(self.mpath(name), os.O_RDONLY)
                    os.fsync(fd)
                    os.close(fd)
                ino.dirty = False
                synced.append(name)
        dirty = sorted(n for n, i in self.names.items() if i.dirty)
        self.note("fsync %s, then kill -9 the daemon and mount again (dirty: %s; %d descriptors open)" % (
            synced, dirty, len(self.fds)))
        self.run(self.a.crash_cmd, "crash and mount")
        for f in self.fds:
            os.close(f.rfd)
            try:
                os.close(f.mfd)
            except OSError:
                pass   # the connection died with the daemon
        self.fds = []
        self.check_listing("after the crash: ")
        for name, ino in sorted(self.names.items()):
            got = self.read_all_path(self.mpath(name))
            if ino.dirty:
                # not required to be anything in particular: continue from what the mount shows
                with open(self.rpath(name), "wb") as w:
                    w.write(got)
                self.note("after the crash %s (changed since its last fsync or close) has %d bytes" % (
                    name, len(got)))
            else:
                self.compare_bytes("after the crash, %s (fsync'ed or closed)" % name,
                                   self.read_all_path(self.rpath(name)), got)
                if os.stat(self.mpath(name)).st_size != len(got):
                    self.fail("after the crash %s: st_size %d, read %d bytes" % (
                        name, os.stat(self.mpath(name)).st_size, len(got)))
            self.names[name] = Inode()
        self.check_all()

    def run(self, cmd, what):
        p = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if p.returncode != 0:
            self.fail("%s (%s) failed with status %d: %s" % (what, cmd, p.returncode, p.stdout))

    # ---- the loop ---------------------------------------------------------------------------------------------------

    OPS = [("write", 30), ("stream", 5), ("writev", 3), ("copy_range", 3), ("direct_read", 4),
           ("unsupported_fallocate", 1), ("append", 8), ("read", 14), ("truncate", 8), ("fallocate", 5), ("zero_range", 4), ("seek_hole", 3), ("fsync", 5),
           ("open", 6), ("close", 6), ("mmap_read", 4), ("mmap_write", 4), ("rename", 4), ("unlink", 2),
           ("dropcache", 4), ("rename_dir", 2)]

    def main(self):
        ops = [o for o, _ in self.OPS]
        weights = [w for _, w in self.OPS]
        t0 = time.monotonic()
        for self.opno in range(1, self.a.ops + 1):
            r = self.rng.random()
            # at least one remount and one crash in every run that may do them
            if self.opno == self.a.ops // 3:
                r = 0.0
            elif self.opno == 2 * self.a.ops // 3:
                r = self.a.remount_p
            if self.a.remount_cmd and r < self.a.remount_p:
                name = "remount"
                self.op_remount()
                touched = None
            elif self.a.crash_cmd and r < self.a.remount_p + self.a.crash_p:
                name = "crash"
                self.op_crash()
                touched = None
            else:
                name = self.rng.choices(ops, weights)[0]
                touched = getattr(self, "op_" + name)()
            self.stats[name] = self.stats.get(name, 0) + 1
            self.check_sizes()
            if self.opno % self.a.full_every == 0:
                self.check_all()
            elif touched is not None:
                self.check_inode(touched)
        self.opno += 1
        self.note("the end: check everything, close all, check again")
        self.check_all()
        self.close_all()
        self.check_all()
        print("fsx: %s: %d operations in %.1f s: %s; lseek found holes before the end %d times" % (
            self.a.label, self.a.ops, time.monotonic() - t0,
            ", ".join("%s %d" % kv for kv in sorted(self.stats.items())), self.seek_holes_seen))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mount")
    p.add_argument("ref")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ops", type=int, default=500)
    p.add_argument("--files", type=int, default=3)
    p.add_argument("--max-fds", type=int, default=6)
    p.add_argument("--max-size", type=int, default=8 << 20)
    p.add_argument("--max-write", type=int, default=3 << 20)
    p.add_argument("--full-every", type=int, default=8)
    p.add_argument("--remount-cmd")
    p.add_argument("--crash-cmd")
    p.add_argument("--remount-p", type=float, default=0.01)
    p.add_argument("--crash-p", type=float, default=0.01)
    p.add_argument("--label", default="fsx")
    p.add_argument("--dir", default="fsx", help="the directory (made in MOUNT and REF) the files live in")
    a = p.parse_args()
    a.mount, a.ref = os.path.join(a.mount, a.dir), os.path.join(a.ref, a.dir)
    for top in (a.mount, a.ref):
        os.makedirs(os.path.join(top, "d"))
    print("fsx: %s: seed %d, %d operations (KVFS_FSX_SEED, KVFS_FSX_OPS change them)" % (a.label, a.seed, a.ops))
    x = Fsx(a)
    try:
        x.main()
    except (Fail, OSError, ValueError) as e:
        print("FSX FAILED (%s): seed %d, operation %d of %d: %s%s" % (
            a.label, a.seed, x.opno, a.ops, "" if isinstance(e, Fail) else type(e).__name__ + ": ", e))
        print("last operations:")
        for line in x.log[-40:]:
            print("  " + line)
        print("descriptors open: %s" % x.fds)
        print("files: %s" % sorted(x.names.items()))
        print("reproduce: KVFS_FSX_SEED=%d KVFS_FSX_OPS=%d bats -f '%s' tests/bats/fs_fsx.bats" % (
            a.seed, x.opno, a.label))
        sys.exit(1)


if __name__ == "__main__":
    main()
