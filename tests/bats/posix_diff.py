#!/usr/bin/env python3
"""posix_diff.py — a differential test of POSIX semantics, in the spirit of pjdfstest: kvfs against a local filesystem.

The same fixed sequence of system calls runs in a directory of the local filesystem (REF, ext4 here) and in the kvfs
mount (MNT), as root and as two unprivileged users (forked children that set their ids with setresuid/setresgid and
setgroups: the ids need no passwd entry). For each step it records the result (a value, or the errno's name) and,
for the paths the step is about, as root with lstat: type, permission bits, uid, gid, nlink, size (not of
directories), rdev, and whether atime, mtime and ctime changed across the step. Then it prints every difference.

A difference that docs/mapping.md documents is listed as "documented" (see documented() below, each with the
section that says so); any other is a defect, and the exit status is 1.

Usage: posix_diff.py REF MNT [-v] [-k KEYWORD] [--remount CMD] [--no-writeback-cache]
  REF, MNT: directories (REF on a local filesystem, MNT the root of a kvfs mount with -o allow_other); the probe
  works in REF/w and MNT/w, which it removes first. Both must be reachable by uid 4321 and 4322 (mode 0755 above).
  -v: print every step's outcome on both; -k: run only the sections whose name contains KEYWORD.
  --remount CMD: then run the shell command CMD, which must unmount and mount MNT again, and compare everything
  below MNT/w (type, mode, owner, size, the three times, symlink targets) before and after: any change is a defect
  (the kernel's and the daemon's caches showed what the store does not keep).
  --no-writeback-cache: MNT is mounted so; the differences documented for the writeback cache are defects then.
"""

import ctypes
import errno
import os
import pickle
import shutil
import stat
import sys
import time

ROOT = ("root", 0, 0, [0])
U1 = ("u1", 4321, 8765, [8765, 8800])  # owns most files; member of 8800
U2 = ("u2", 4322, 8766, [8766])  # another user, in no shared group
G_SHARED = 8800  # U1 is a member, U2 is not
G_OTHER = 8767  # nobody's group
TICK = 0.015  # > a jiffy of the coarse clock, so that a time stamped in the step differs from the one before

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EACCESS = 0x200
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2

libc = ctypes.CDLL(None, use_errno=True)
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
libc.fchmodat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_int]
libc.faccessat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(Timespec), ctypes.c_int]


class Dirent(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64), ("d_reclen", ctypes.c_ushort),
                ("d_type", ctypes.c_ubyte), ("d_name", ctypes.c_char * 256)]


libc.opendir.restype = ctypes.c_void_p
libc.opendir.argtypes = [ctypes.c_char_p]
libc.readdir.restype = ctypes.POINTER(Dirent)
libc.readdir.argtypes = [ctypes.c_void_p]
libc.closedir.argtypes = [ctypes.c_void_p]

DT = {0: "UNKNOWN", 1: "FIFO", 2: "CHR", 4: "DIR", 6: "BLK", 8: "REG", 10: "LNK", 12: "SOCK"}


def _check(rc):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


# ---------------------------------------------------------------------------------------------------------------
# Operations. Each returns a function of the work directory b that performs the system calls and returns a value.

def J(b, rel):
    return b if rel == "." else os.path.join(b, rel)


def op_open(rel, flags, mode=0o644, write=None, read=False, fstat=False):
    def f(b):
        fd = os.open(J(b, rel), flags, mode)
        try:
            out = "ok"
            if write is not None:
                out = os.write(fd, write)
            if read:
                out = os.read(fd, 4096)
            if fstat:
                out = stat.filemode(os.fstat(fd).st_mode)
            return out
        finally:
            os.close(fd)
    return f


def creat(rel, mode=0o644, data=b""):
    return op_open(rel, os.O_CREAT | os.O_WRONLY | os.O_EXCL, mode, write=data)


def mkdir(rel, mode=0o777):
    return lambda b: os.mkdir(J(b, rel), mode)


def rmdir(rel):
    return lambda b: os.rmdir(J(b, rel))


def unlink(rel):
    return lambda b: os.unlink(J(b, rel))


def chmod(rel, mode):
    return lambda b: os.chmod(J(b, rel), mode)


def lchmod(rel, mode):
    return lambda b: _check(libc.fchmodat(AT_FDCWD, os.fsencode(J(b, rel)), mode, AT_SYMLINK_NOFOLLOW))


def chown(rel, uid, gid, follow=True):
    return lambda b: os.chown(J(b, rel), uid, gid, follow_symlinks=follow)


def symlink(target, rel):
    return lambda b: os.symlink(target, J(b, rel))


def link(src, dst):
    return lambda b: os.link(J(b, src), J(b, dst), follow_symlinks=False)


def mknod(rel, mode, dev=0):
    return lambda b: os.mknod(J(b, rel), mode, dev)


def readlink(rel):
    return lambda b: len(os.readlink(J(b, rel)))


def truncate(rel, size):
    return lambda b: os.truncate(J(b, rel), size)


def ftruncate(rel, size, flags=os.O_WRONLY):
    def f(b):
        fd = os.open(J(b, rel), flags)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
    return f


def pwrite(rel, data, off, flags=os.O_WRONLY, sync=False):
    def f(b):
        fd = os.open(J(b, rel), flags)
        try:
            n = os.pwrite(fd, data, off)
            if sync:
                os.fsync(fd)
            return n
        finally:
            os.close(fd)
    return f


def ts(t):
    if t == "now":
        return Timespec(0, UTIME_NOW)
    if t == "omit":
        return Timespec(0, UTIME_OMIT)
    return Timespec(t[0], t[1])


def utimens(rel, atime, mtime, nofollow=False):
    """atime/mtime: (s, ns), "now" or "omit"; both None: times NULL (touch). Returns the times set explicitly."""
    def f(b):
        p = os.fsencode(J(b, rel))
        if atime is None:
            _check(libc.utimensat(AT_FDCWD, p, None, AT_SYMLINK_NOFOLLOW if nofollow else 0))
        else:
            arr = (Timespec * 2)(ts(atime), ts(mtime))
            _check(libc.utimensat(AT_FDCWD, p, arr, AT_SYMLINK_NOFOLLOW if nofollow else 0))
        st = os.lstat(J(b, rel))
        return (st.st_atime_ns if isinstance(atime, tuple) else "-",
                st.st_mtime_ns if isinstance(mtime, tuple) else "-")
    return f


def rename(src, dst, flags=0):
    """Returns which of the moved entry's own times changed (the runner stats only the paths)."""
    def f(b):
        try:
            before = os.lstat(J(b, src))
        except OSError:
            before = None
        try:
            other = os.lstat(J(b, dst))
        except OSError:
            other = None
        if flags:
            _check(libc.renameat2(AT_FDCWD, os.fsencode(J(b, src)), AT_FDCWD, os.fsencode(J(b, dst)), flags))
        else:
            os.rename(J(b, src), J(b, dst))
        if before is None:
            return "ok"
        out = "moved: " + times_changed(before, os.lstat(J(b, dst)))
        if flags & RENAME_EXCHANGE:
            out += ", exchanged: " + times_changed(other, os.lstat(J(b, src)))
        return out
    return f


def rename_open(src, dst):
    """Rename of a file open for writing (written before and after): its times and content."""
    def f(b):
        fd = os.open(J(b, src), os.O_RDWR)
        try:
            os.pwrite(fd, b"A", 0)
            before = os.fstat(fd)
            time.sleep(TICK)
            os.rename(J(b, src), J(b, dst))
            mid = os.fstat(fd)
            os.pwrite(fd, b"B", 1)
            return "moved: %s, %r" % (times_changed(before, mid), os.pread(fd, 16, 0))
        finally:
            os.close(fd)
    return f


def access(rels, modes=("F", "R", "W", "X", "RW", "RX", "WX"), nofollow=False):
    """faccessat of each path for each mode (and once with AT_EACCESS): a table of results."""
    bits = {"F": os.F_OK, "R": os.R_OK, "W": os.W_OK, "X": os.X_OK}

    def f(b):
        out = []
        for rel in rels:
            row = []
            for m in modes:
                mask = 0
                for c in m:
                    mask |= bits[c]
                for fl in (0, AT_EACCESS):
                    fl |= AT_SYMLINK_NOFOLLOW if nofollow else 0
                    rc = libc.faccessat(AT_FDCWD, os.fsencode(J(b, rel)), mask, fl)
                    row.append(m + ("e" if fl & AT_EACCESS else "") + "="
                               + ("ok" if rc == 0 else errno.errorcode[ctypes.get_errno()]))
            out.append(rel + ": " + " ".join(row))
        return out
    return f


def readdir(rel):
    """Sorted (name, d_type) of a listing with libc's readdir."""
    def f(b):
        d = libc.opendir(os.fsencode(J(b, rel)))
        if not d:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        out = []
        try:
            while True:
                ctypes.set_errno(0)
                ent = libc.readdir(d)
                if not ent:
                    _check(ctypes.get_errno())
                    break
                out.append((ent.contents.d_name.decode(errors="replace"), DT.get(ent.contents.d_type, "?")))
        finally:
            libc.closedir(d)
        return sorted(out)
    return f


def setxattr(rel, name, value, follow=True):
    return lambda b: os.setxattr(J(b, rel), name, value, follow_symlinks=follow)


def getxattr(rel, name):
    return lambda b: os.getxattr(J(b, rel), name)


def seq(*fns):
    """Several calls as one step: the first failure is the result."""
    def f(b):
        out = None
        for fn in fns:
            out = fn(b)
        return out
    return f


# ---------------------------------------------------------------------------------------------------------------
# Recording

def times_changed(before, after):
    return "".join(c if getattr(before, a) != getattr(after, a) else "-"
                   for c, a in (("a", "st_atime_ns"), ("m", "st_mtime_ns"), ("c", "st_ctime_ns")))


def snap(path):
    try:
        return os.lstat(path)
    except OSError as e:
        return errno.errorcode[e.errno]


def describe(before, after):
    """The fields compared for one path."""
    if isinstance(after, str):
        return {"exists": after}
    d = {"type": stat.filemode(after.st_mode)[0], "perm": "%04o" % stat.S_IMODE(after.st_mode),
         "uid": after.st_uid, "gid": after.st_gid, "nlink": after.st_nlink}
    if not stat.S_ISDIR(after.st_mode):
        d["size"] = after.st_size
    if stat.S_ISCHR(after.st_mode) or stat.S_ISBLK(after.st_mode):
        d["rdev"] = "%d,%d" % (os.major(after.st_rdev), os.minor(after.st_rdev))
    if isinstance(before, str):
        d["times"] = "new"
    else:
        d["times"] = times_changed(before, after)
    return d


def outcome(fn, b):
    try:
        v = fn(b)
        if v is None:
            return "ok"
        if isinstance(v, str) and v.startswith(("ok", "moved")):
            return v
        return "ok: " + repr(v)
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    except Exception as e:  # noqa: BLE001 — a bug in a step must show, not stop the run
        return "exception: " + repr(e)


def run_as(who, fn, b):
    if who is ROOT:
        return outcome(fn, b)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgroups(who[3])
            os.setresgid(who[2], who[2], who[2])
            os.setresuid(who[1], who[1], who[1])
            res = outcome(fn, b)
        except BaseException as e:  # noqa: BLE001
            res = "exception in child: " + repr(e)
        os.write(w, pickle.dumps(res))
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return pickle.loads(data)


class Runner:
    def __init__(self, base, only):
        self.b = base
        self.only = only
        self.section = ""
        self.records = []

    def sec(self, name):
        self.section = name

    def step(self, desc, who, fn, watch=(), kind=None):
        if self.only and self.only not in self.section:
            return
        paths = [J(self.b, w) for w in watch]
        before = [snap(p) for p in paths]
        time.sleep(TICK)
        res = run_as(who, fn, self.b)
        after = [snap(p) for p in paths]
        self.records.append({
            "id": "%s.%d" % (self.section, sum(1 for r in self.records if r["sec"] == self.section) + 1),
            "sec": self.section, "desc": desc, "who": who[0], "kind": kind, "res": res,
            "paths": {w: describe(x, y) for w, x, y in zip(watch, before, after)}})


# ---------------------------------------------------------------------------------------------------------------
# The scenario: the same on both trees.

def scenario(r):
    O_C, O_X, O_W, O_R, O_RW = os.O_CREAT, os.O_EXCL, os.O_WRONLY, os.O_RDONLY, os.O_RDWR
    step = r.step

    r.sec("open")
    step("mkdir o", ROOT, mkdir("o"), [".", "o"])
    step("chmod o 0777", ROOT, chmod("o", 0o777), ["o"])
    step("create o/f 0644", ROOT, creat("o/f", 0o644, b"hello"), ["o", "o/f"])
    step("O_CREAT|O_EXCL on an existing file", ROOT, op_open("o/f", O_C | O_X | O_W), ["o", "o/f"])
    step("O_CREAT|O_EXCL on an existing file (user)", U1, op_open("o/f", O_C | O_X | O_W), ["o", "o/f"])
    step("symlink o/dangle -> missing", ROOT, symlink("missing", "o/dangle"), ["o", "o/dangle"])
    step("O_CREAT|O_EXCL on a dangling symlink", ROOT, op_open("o/dangle", O_C | O_X | O_W),
         ["o", "o/dangle", "o/missing"])
    step("O_CREAT on a dangling symlink creates its target", U1, op_open("o/dangle", O_C | O_W, 0o640),
         ["o", "o/dangle", "o/missing"])
    step("O_CREAT through a symlink into a missing directory", ROOT,
         seq(symlink("nodir/x", "o/dangle2"), op_open("o/dangle2", O_C | O_W)), ["o", "o/dangle2"])
    step("O_CREAT|O_EXCL on a symlink to a file", ROOT,
         seq(symlink("f", "o/lf"), op_open("o/lf", O_C | O_X | O_W)), ["o/lf", "o/f"])
    step("O_RDONLY|O_TRUNC by a non-owner without write permission", U1, op_open("o/f", O_R | os.O_TRUNC),
         ["o/f"])
    step("O_WRONLY by a non-owner without write permission", U1, op_open("o/f", O_W), ["o/f"])
    step("O_RDONLY by a non-owner with read permission", U1, op_open("o/f", O_R, read=True), ["o/f"], kind="read")
    step("create o/g 0666", ROOT, seq(creat("o/g", 0o666, b"0123456789"), chmod("o/g", 0o666)), ["o/g"])
    step("O_TRUNC by a non-owner with write permission", U1, op_open("o/g", O_W | os.O_TRUNC), ["o", "o/g"])
    step("create o/u1ro 0444 (user)", U1, creat("o/u1ro", 0o444, b"data"), ["o", "o/u1ro"])
    step("O_TRUNC by the owner without write permission", U1, op_open("o/u1ro", O_W | os.O_TRUNC), ["o/u1ro"])
    step("O_TRUNC by root without write permission", ROOT, op_open("o/u1ro", O_W | os.O_TRUNC), ["o/u1ro"])
    step("O_CREAT|O_RDWR mode 0, then write through that descriptor", U1,
         op_open("o/zero", O_C | O_X | O_RW, 0, write=b"abc"), ["o/zero"])
    step("O_RDONLY of a mode-0 file by its owner", U1, op_open("o/zero", O_R), ["o/zero"])
    step("O_RDONLY of a mode-0 file by root", ROOT, op_open("o/zero", O_R, read=True), ["o/zero"], kind="read")
    step("O_DIRECTORY on a file", ROOT, op_open("o/f", O_R | os.O_DIRECTORY), ["o/f"])
    step("mkdir o/d; symlink o/ld -> d", ROOT, seq(mkdir("o/d", 0o755), symlink("d", "o/ld")), ["o", "o/d", "o/ld"])
    step("O_DIRECTORY on a symlink to a directory", ROOT, op_open("o/ld", O_R | os.O_DIRECTORY), ["o/ld"])
    step("O_DIRECTORY|O_NOFOLLOW on a symlink to a directory", ROOT,
         op_open("o/ld", O_R | os.O_DIRECTORY | os.O_NOFOLLOW), ["o/ld"])
    step("O_NOFOLLOW on a symlink", ROOT, op_open("o/lf", O_R | os.O_NOFOLLOW), ["o/lf"])
    step("O_NOFOLLOW|O_PATH on a symlink", ROOT, op_open("o/lf", os.O_PATH | os.O_NOFOLLOW, fstat=True), ["o/lf"])
    step("O_WRONLY on a directory", ROOT, op_open("o/d", O_W), ["o/d"])
    step("O_CREAT|O_WRONLY on a directory", ROOT, op_open("o/d", O_C | O_W), ["o/d"])
    step("O_RDONLY on a directory", ROOT, op_open("o/d", O_R), ["o/d"])
    step("O_CREAT below a file", ROOT, op_open("o/f/x", O_C | O_W), ["o/f"])
    step("O_RDONLY below a missing directory", ROOT, op_open("o/nope/x", O_R), ["o"])
    step("O_CREAT|O_EXCL with a trailing slash", ROOT, op_open("o/newdir/", O_C | O_X | O_W), ["o"])
    step("O_CREAT by a user in a directory it may not write", U1, op_open("o/d/x", O_C | O_W), ["o/d"])
    step("O_APPEND write", ROOT, op_open("o/f", O_W | os.O_APPEND, write=b" world"), ["o/f"])
    step("O_CREAT mode 04755 by root", ROOT, creat("o/suid", 0o4755), ["o/suid"])
    step("O_CREAT mode 06755 by a user (its own group)", U1, creat("o/sgid", 0o6755), ["o/sgid"])
    step("O_TMPFILE", ROOT, op_open("o", os.O_TMPFILE | O_RW, 0o600, write=b"x"), ["o"], kind="tmpfile")

    r.sec("chmod")
    step("mkdir c 0777", ROOT, seq(mkdir("c"), chmod("c", 0o777)), ["c"])
    step("create c/rootf", ROOT, creat("c/rootf", 0o644, b"r"), ["c/rootf"])
    step("chmod by a non-owner", U1, chmod("c/rootf", 0o666), ["c/rootf"])
    step("chown (group) by a non-owner", U1, chown("c/rootf", -1, 8765), ["c/rootf"])
    step("chown -1 -1 by a non-owner", U1, chown("c/rootf", -1, -1), ["c/rootf"])
    step("create c/u1f (user)", U1, creat("c/u1f", 0o644, b"u"), ["c/u1f"])
    step("chmod by the owner", U1, chmod("c/u1f", 0o600), ["c/u1f"])
    step("chmod to the same mode", U1, chmod("c/u1f", 0o600), ["c/u1f"])
    step("chown to another user by the owner", U1, chown("c/u1f", U2[1], -1), ["c/u1f"])
    step("chown to itself by the owner", U1, chown("c/u1f", U1[1], -1), ["c/u1f"])
    step("chown to a group it is in by the owner", U1, chown("c/u1f", -1, G_SHARED), ["c/u1f"])
    step("chown to a group it is not in by the owner", U1, chown("c/u1f", -1, G_OTHER), ["c/u1f"])
    step("chown -1 -1 by the owner", U1, chown("c/u1f", -1, -1), ["c/u1f"])
    step("chown by root", ROOT, chown("c/u1f", U2[1], U2[2]), ["c/u1f"])
    step("symlink c/sl -> rootf", ROOT, symlink("rootf", "c/sl"), ["c/sl"])
    step("lchown of a symlink", ROOT, chown("c/sl", U1[1], U1[2], follow=False), ["c/sl", "c/rootf"])
    step("chmod of a symlink with AT_SYMLINK_NOFOLLOW", ROOT, lchmod("c/sl", 0o700), ["c/sl", "c/rootf"])
    step("chmod through a symlink", ROOT, chmod("c/sl", 0o640), ["c/sl", "c/rootf"])
    # set-user-ID and set-group-ID cleared by chown
    for name, mode, who, uid, gid in (("s1", 0o4755, ROOT, U1[1], -1), ("s2", 0o2755, ROOT, -1, U1[2]),
                                      ("s3", 0o2745, ROOT, -1, U1[2]), ("s4", 0o6755, U1, -1, G_SHARED),
                                      ("s5", 0o2745, U1, -1, G_SHARED), ("s6", 0o6755, U1, -1, -1),
                                      ("s7", 0o6755, ROOT, -1, -1)):
        owner = (U1[1], U1[2]) if who is U1 else (0, 0)
        step("c/%s %04o owned %d:%d" % (name, mode, *owner), ROOT,
             seq(creat("c/" + name, 0o644, b"x"), chown("c/" + name, *owner), chmod("c/" + name, mode)),
             ["c/" + name])
        step("chown %d:%d of a %04o file by %s" % (uid, gid, mode, who[0]), who, chown("c/" + name, uid, gid),
             ["c/" + name])
    # ... by a write or a truncation from a user without CAP_FSETID
    for name, mode, gid, who, fn, what in (
            ("w1", 0o6777, U1[2], U2, op_open, "append by another user"),
            ("w2", 0o2767, G_SHARED, U1, op_open, "append by the owner, in the group, no g+x"),
            ("w3", 0o2767, G_SHARED, U2, op_open, "append by another user not in the group, no g+x"),
            ("w4", 0o4777, U1[2], U1, op_open, "append by the owner"),
            ("w5", 0o6777, U1[2], ROOT, op_open, "append by root"),
            ("w6", 0o6777, U1[2], U2, truncate, "truncate(2) by another user"),
            ("w7", 0o6777, U1[2], U2, ftruncate, "ftruncate by another user"),
            ("w8", 0o6777, U1[2], U2, "otrunc", "O_TRUNC by another user"),
            ("w9", 0o6777, U1[2], U2, "pwrite0", "write of 0 bytes by another user")):
        step("c/%s %04o owned by u1, group %d" % (name, mode, gid), ROOT,
             seq(creat("c/" + name, 0o644, b"data"), chown("c/" + name, U1[1], gid), chmod("c/" + name, mode)),
             ["c/" + name])
        p = "c/" + name
        if fn is op_open:
            f = op_open(p, os.O_WRONLY | os.O_APPEND, write=b"more")
        elif fn is truncate:
            f = truncate(p, 2)
        elif fn is ftruncate:
            f = ftruncate(p, 2)
        elif fn == "otrunc":
            f = op_open(p, os.O_WRONLY | os.O_TRUNC)
        else:
            f = pwrite(p, b"", 0)
        step(what + " of c/" + name, who, f, [p])
    # set-group-ID by chmod from a user not in the file's group
    step("c/g1 owned by u1, group not its own", ROOT,
         seq(creat("c/g1", 0o644), chown("c/g1", U1[1], G_OTHER)), ["c/g1"])
    step("chmod 02755 by the owner not in the group", U1, chmod("c/g1", 0o2755), ["c/g1"])
    step("chmod 04755 by the owner not in the group", U1, chmod("c/g1", 0o4755), ["c/g1"])
    step("c/g2 owned by u1, group 8800 (a member)", ROOT,
         seq(creat("c/g2", 0o644), chown("c/g2", U1[1], G_SHARED)), ["c/g2"])
    step("chmod 02755 by the owner in the group", U1, chmod("c/g2", 0o2755), ["c/g2"])
    step("chmod 02755 by root not in the group", ROOT, chmod("c/g1", 0o2755), ["c/g1"])
    step("c/gd directory owned by u1, group not its own", ROOT,
         seq(mkdir("c/gd", 0o755), chown("c/gd", U1[1], G_OTHER)), ["c/gd"])
    step("chmod 02755 of a directory by the owner not in the group", U1, chmod("c/gd", 0o2755), ["c/gd"])
    step("chmod 01777 of a file by its owner", U1, chmod("c/g2", 0o1777), ["c/g2"])

    r.sec("sgid")
    step("mkdir g, group 8800, 02777", ROOT, seq(mkdir("g"), chown("g", 0, G_SHARED), chmod("g", 0o2777)), ["g"])
    step("create in a setgid directory (not a member)", U2, creat("g/f", 0o644), ["g", "g/f"])
    step("mkdir in a setgid directory (not a member)", U2, mkdir("g/d", 0o755), ["g", "g/d"])
    step("create 02755 in a setgid directory (not a member)", U2, creat("g/fs", 0o2755), ["g/fs"])
    step("create 02755 in a setgid directory (a member)", U1, creat("g/fs1", 0o2755), ["g/fs1"])
    step("mkdir 0777 in a setgid directory", U2, mkdir("g/ds", 0o777), ["g/ds"])
    step("symlink in a setgid directory", U2, symlink("f", "g/sl"), ["g/sl"])
    step("mkfifo in a setgid directory", U2, mknod("g/fifo", stat.S_IFIFO | 0o644), ["g/fifo"])
    step("create in a subdirectory that inherited setgid", U2, creat("g/d/f", 0o644), ["g/d", "g/d/f"])
    step("mkdir below that", U2, mkdir("g/d/e", 0o700), ["g/d/e"])
    step("a file renamed into a setgid directory keeps its group", U2,
         seq(creat("o/u2f", 0o644), lambda b: time.sleep(TICK), rename("o/u2f", "g/u2f")), ["g/u2f"])
    step("chmod g-s of the setgid directory", ROOT, chmod("g", 0o777), ["g"])
    step("create after that", U2, creat("g/f2", 0o644), ["g/f2"])

    r.sec("sticky")
    step("mkdir st 01777", ROOT, seq(mkdir("st"), chmod("st", 0o1777)), ["st"])
    step("u1 creates st/u1f and st/u1d", U1, seq(creat("st/u1f", 0o666), mkdir("st/u1d")), ["st/u1f", "st/u1d"])
    step("u2 creates st/u2f", U2, creat("st/u2f", 0o666), ["st/u2f"])
    step("unlink of another user's file", U2, unlink("st/u1f"), ["st", "st/u1f"])
    step("rename of another user's file", U2, rename("st/u1f", "st/x"), ["st", "st/u1f", "st/x"])
    step("rename over another user's file", U2, rename("st/u2f", "st/u1f"), ["st", "st/u1f", "st/u2f"])
    step("rmdir of another user's directory", U2, rmdir("st/u1d"), ["st", "st/u1d"])
    step("rename of another user's directory", U2, rename("st/u1d", "st/y"), ["st/u1d"])
    step("rename of its own file", U2, rename("st/u2f", "st/u2g"), ["st", "st/u2f", "st/u2g"])
    step("unlink of its own file", U1, unlink("st/u1f"), ["st", "st/u1f"])
    step("unlink of another user's file by root", ROOT, unlink("st/u2g"), ["st", "st/u2g"])
    step("mkdir st2 01777 owned by u1", ROOT, seq(mkdir("st2"), chmod("st2", 0o1777), chown("st2", U1[1], U1[2])),
         ["st2"])
    step("u2 creates st2/u2f", U2, creat("st2/u2f", 0o644), ["st2/u2f"])
    step("unlink of another user's file by the directory's owner", U1, unlink("st2/u2f"), ["st2", "st2/u2f"])
    step("set a user xattr on another user's directory in a sticky dir", U2, setxattr("st/u1d", "user.x", b"1"),
         ["st/u1d"])

    r.sec("utime")
    step("mkdir t 0777", ROOT, seq(mkdir("t"), chmod("t", 0o777)), ["t"])
    step("u1 creates t/f 0666 and t/p 0644", U1, seq(creat("t/f", 0o666), chmod("t/f", 0o666), creat("t/p", 0o644)),
         ["t/f", "t/p"])
    step("utimensat NULL by a non-owner with write permission", U2, utimens("t/f", None, None), ["t/f"])
    step("utimensat UTIME_NOW,UTIME_NOW by a non-owner with write permission", U2, utimens("t/f", "now", "now"),
         ["t/f"])
    step("utimensat explicit by a non-owner with write permission", U2, utimens("t/f", (1000, 5), (2000, 7)),
         ["t/f"])
    step("utimensat UTIME_NOW,UTIME_OMIT by a non-owner with write permission", U2,
         utimens("t/f", "now", "omit"), ["t/f"])
    step("utimensat NULL by a non-owner without write permission", U2, utimens("t/p", None, None), ["t/p"])
    step("utimensat UTIME_NOW,UTIME_NOW by a non-owner without write permission", U2,
         utimens("t/p", "now", "now"), ["t/p"])
    step("utimensat explicit by the owner", U1, utimens("t/p", (1000000000, 123456789), (1500000000, 987654321)),
         ["t/p"])
    step("utimensat UTIME_OMIT,UTIME_OMIT by the owner", U1, utimens("t/p", "omit", "omit"), ["t/p"])
    step("utimensat UTIME_OMIT,explicit by the owner", U1, utimens("t/p", "omit", (1600000000, 1)), ["t/p"])
    step("utimensat explicit,UTIME_NOW by the owner", U1, utimens("t/p", (1700000000, 2), "now"), ["t/p"])
    step("utimensat explicit by root on a user's file", ROOT, utimens("t/p", (3, 4), (5, 6)), ["t/p"])
    step("utimensat a time before 1970", ROOT, utimens("t/p", (-1000, 0), (-86400 * 365, 500)), ["t/p"])
    step("symlink t/sl -> p", ROOT, symlink("p", "t/sl"), ["t/sl"])
    step("utimensat AT_SYMLINK_NOFOLLOW of a symlink", ROOT, utimens("t/sl", (7, 8), (9, 10), nofollow=True),
         ["t/sl", "t/p"])
    step("utimensat of a directory by its owner", ROOT, utimens("t", (11, 12), (13, 14)), ["t"])

    r.sec("rename")
    step("set up r: d1/sub d2/x f1 f2 d3 d4 sl", ROOT,
         seq(mkdir("r"), chmod("r", 0o777), mkdir("r/d1"), mkdir("r/d1/sub"), mkdir("r/d2"), creat("r/d2/x"),
             creat("r/f1", 0o644, b"one"), creat("r/f2", 0o644, b"two!"), mkdir("r/d3"), mkdir("r/d4"),
             symlink("f1", "r/sl")), ["r"])
    step("rename a file over a directory", ROOT, rename("r/f1", "r/d1"), ["r", "r/f1", "r/d1"])
    step("rename a directory over a file", ROOT, rename("r/d1", "r/f1"), ["r", "r/f1", "r/d1"])
    step("rename a directory over a non-empty directory", ROOT, rename("r/d1", "r/d2"), ["r", "r/d1", "r/d2"])
    step("rename a directory into its own subdirectory", ROOT, rename("r/d1", "r/d1/sub/in"), ["r/d1"])
    step("rename a directory over its own subdirectory", ROOT, rename("r/d1", "r/d1/sub"), ["r/d1"])
    step("rename a file to itself", ROOT, rename("r/f1", "r/f1"), ["r", "r/f1"])
    step("rename a directory to itself", ROOT, rename("r/d1", "r/d1"), ["r", "r/d1"])
    step("rename a file over a file", ROOT, rename("r/f1", "r/f2"), ["r", "r/f1"])
    step("rename a directory over an empty directory", ROOT, rename("r/d3", "r/d4"), ["r", "r/d3"])
    step("rename a directory to another parent", ROOT, rename("r/d4", "r/d2/d4"), ["r", "r/d2", "r/d2/d4"])
    step("rename a file to another parent", ROOT, rename("r/f2", "r/d2/f2"), ["r", "r/d2", "r/d2/f2"])
    step("RENAME_NOREPLACE over an existing file", ROOT, rename("r/d2/f2", "r/d2/x", RENAME_NOREPLACE),
         ["r/d2", "r/d2/f2", "r/d2/x"])
    step("RENAME_NOREPLACE to a new name", ROOT, rename("r/d2/f2", "r/f3", RENAME_NOREPLACE),
         ["r", "r/d2", "r/f3"])
    step("RENAME_EXCHANGE of a file and a directory", ROOT, rename("r/f3", "r/d1", RENAME_EXCHANGE), ["r"])
    step("RENAME_EXCHANGE with a missing name", ROOT, rename("r/f3", "r/none", RENAME_EXCHANGE), ["r", "r/f3"])
    step("RENAME_EXCHANGE across directories", ROOT, rename("r/d1", "r/d2/x", RENAME_EXCHANGE), ["r", "r/d2"])
    step("RENAME_EXCHANGE of two directories", ROOT,
         seq(mkdir("r/e1"), mkdir("r/e2"), creat("r/e2/f"), lambda b: time.sleep(TICK),
             rename("r/e1", "r/e2", RENAME_EXCHANGE)), ["r"])
    step("rename of a fifo", ROOT, seq(mknod("r/fifo", stat.S_IFIFO | 0o644), lambda b: time.sleep(TICK),
                                       rename("r/fifo", "r/fifo2")), ["r", "r/fifo2"])
    step("RENAME_NOREPLACE|RENAME_EXCHANGE", ROOT, rename("r/d1", "r/f3", RENAME_NOREPLACE | RENAME_EXCHANGE),
         ["r/d1", "r/f3"])
    step("rename with a trailing slash on a file", ROOT, rename("r/d1/", "r/d9"), ["r", "r/d1"])
    step("rename of '.'", ROOT, rename("r/d2/.", "r/d9"), ["r", "r/d2"])
    step("rename into a missing directory", ROOT, rename("r/d1", "r/nodir/x"), ["r", "r/d1"])
    step("rename of a symlink", ROOT, rename("r/sl", "r/sl2"), ["r", "r/sl", "r/sl2"])
    step("readlink of the renamed symlink", ROOT, readlink("r/sl2"), [], kind="read")
    step("rename of an open file", ROOT, rename_open("r/d2/f2", "r/d2/f5"), ["r/d2/f5"])
    step("root's directory r/rootd, 0755", ROOT, seq(mkdir("r/rootd", 0o755), mkdir("r/d5")), ["r/rootd"])
    step("rename of another user's directory to another parent", U1, rename("r/rootd", "r/d5/rootd"),
         ["r/rootd", "r/d5/rootd"])
    step("rename of another user's directory in its parent", U1, rename("r/rootd", "r/rootd2"),
         ["r", "r/rootd", "r/rootd2"])
    step("rename of another user's file", U1, rename("r/f3", "r/f4"), ["r", "r/f3", "r/f4"])
    step("rename a directory over a non-empty directory elsewhere", ROOT, rename("r/d5", "r/d2"),
         ["r", "r/d5", "r/d2"])
    step("RENAME_EXCHANGE of a directory and its own subdirectory", ROOT,
         seq(mkdir("r/d5/in"), rename("r/d5", "r/d5/in", RENAME_EXCHANGE)), ["r/d5", "r/d5/in"])
    step("listing of r after the renames", ROOT, readdir("r"), ["r"], kind="read")

    r.sec("mkdir")
    step("mkdir m 0777", ROOT, seq(mkdir("m"), chmod("m", 0o777)), ["m"])
    step("mkdir m/a", ROOT, mkdir("m/a", 0o755), ["m", "m/a"])
    step("mkdir of an existing directory", ROOT, mkdir("m/a", 0o755), ["m", "m/a"])
    step("mkdir of an existing file", ROOT, seq(creat("m/f"), mkdir("m/f")), ["m/f"])
    step("mkdir of a dangling symlink", ROOT, seq(symlink("nowhere", "m/dl"), mkdir("m/dl")), ["m/dl"])
    step("mkdir below a missing directory", ROOT, mkdir("m/a/b/c"), ["m/a"])
    step("mkdir 01777 (umask 022)", ROOT, mkdir("m/sticky", 0o1777), ["m/sticky"])
    step("mkdir 02777 outside a setgid directory", ROOT, mkdir("m/sg", 0o2777), ["m/sg"])
    step("mkdir 04777", ROOT, mkdir("m/su", 0o4777), ["m/su"])
    step("mkdir with a trailing slash", ROOT, mkdir("m/ts/"), ["m", "m/ts"])
    step("mkdir m/a/x", ROOT, mkdir("m/a/x"), ["m/a", "m/a/x"])
    step("rmdir of a non-empty directory", ROOT, rmdir("m/a"), ["m", "m/a"])
    step("rmdir of a file", ROOT, rmdir("m/f"), ["m", "m/f"])
    step("rmdir of '.'", ROOT, rmdir("m/a/."), ["m/a"])
    step("rmdir of '..'", ROOT, rmdir("m/a/x/.."), ["m/a"])
    step("rmdir of a missing name", ROOT, rmdir("m/none"), ["m"])
    step("rmdir of a symlink to a directory", ROOT, seq(symlink("a", "m/la"), rmdir("m/la")), ["m/la", "m/a"])
    step("unlink of a directory", ROOT, unlink("m/a"), ["m", "m/a"])
    step("unlink of a missing name", ROOT, unlink("m/none"), ["m"])
    step("mkdir by a user in a directory it may not write", U1, mkdir("m/a/y"), ["m/a"])
    step("rmdir by a user in a directory it may not write", U1, rmdir("m/a/x"), ["m/a", "m/a/x"])
    step("rmdir with a trailing slash", ROOT, rmdir("m/a/x/"), ["m/a", "m/a/x"])
    step("rmdir m/a", ROOT, rmdir("m/a"), ["m", "m/a"])
    step("mkdir m/e with subdirectories e1 e2 e3 and a file", ROOT,
         seq(mkdir("m/e"), mkdir("m/e/e1"), mkdir("m/e/e2"), mkdir("m/e/e3"), creat("m/e/f")), ["m/e"])
    step("rmdir of a directory holding only directories", ROOT, seq(unlink("m/e/f"), rmdir("m/e")), ["m", "m/e"])
    step("rmdir e1", ROOT, rmdir("m/e/e1"), ["m/e", "m/e/e1"])
    step("mkdir in a removed directory's place", ROOT, seq(rmdir("m/e/e2"), mkdir("m/e/e2", 0o700)),
         ["m/e", "m/e/e2"])

    r.sec("link")
    step("mkdir l; create l/f", ROOT, seq(mkdir("l"), creat("l/f", 0o644, b"L")), ["l", "l/f"])
    step("link", ROOT, link("l/f", "l/g"), ["l", "l/f", "l/g"], kind="link")
    step("link of a missing file", ROOT, link("l/none", "l/h"), ["l", "l/h"], kind="link")
    step("link to an existing name", ROOT, seq(creat("l/f2"), link("l/f2", "l/f2")), ["l/f2"], kind="link")
    step("link of a directory", ROOT, seq(mkdir("l/d"), link("l/d", "l/d2")), ["l", "l/d"], kind="link")
    step("link of a symlink", ROOT, seq(symlink("f", "l/sl"), link("l/sl", "l/sl2")), ["l/sl", "l/sl2"],
         kind="link")

    r.sec("names")
    step("mkdir n", ROOT, mkdir("n"), ["n"])
    step("create a name of 255 bytes", ROOT, creat("n/" + "a" * 255), ["n", "n/" + "a" * 255])
    step("create a name of 256 bytes", ROOT, creat("n/" + "a" * 256), ["n"])
    step("mkdir a name of 255 bytes", ROOT, mkdir("n/" + "b" * 255), ["n", "n/" + "b" * 255])
    step("mkdir a name of 256 bytes", ROOT, mkdir("n/" + "b" * 256), ["n"])
    step("symlink named with 256 bytes", ROOT, symlink("x", "n/" + "c" * 256), ["n"])
    step("rename to a name of 256 bytes", ROOT, rename("n/" + "a" * 255, "n/" + "d" * 256), ["n"])
    step("lookup of a name of 256 bytes", ROOT, lambda b: os.lstat(J(b, "n/" + "e" * 256)) and None, ["n"])
    step("symlink with a target of 4095 bytes", ROOT,
         seq(symlink("t/" * 2047 + "x", "n/long"), readlink("n/long")), ["n", "n/long"])
    step("symlink with a target of 4096 bytes", ROOT, symlink("t/" * 2048, "n/long2"), ["n", "n/long2"])
    step("symlink with an empty target", ROOT, symlink("", "n/empty"), ["n", "n/empty"])
    step("names with UTF-8, spaces, newlines, '%' and a leading '-'", ROOT,
         seq(creat("n/caf\u00e9"), creat("n/a b"), creat("n/new\nline"), creat("n/100%"), creat("n/-x"),
             creat("n/.hidden"), readdir("n")), ["n"], kind="read")

    def deep_paths(b):
        # Relative to the work directory: a path of 4095 bytes opens, one of 4096 does not (PATH_MAX counts the NUL).
        comp = "p" * 250
        fd = os.open(J(b, "n"), os.O_RDONLY | os.O_DIRECTORY)
        rel = []
        try:
            for _ in range(16):
                os.mkdir(comp, dir_fd=fd)
                nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = nfd
                rel.append(comp)
        finally:
            os.close(fd)
        out = []
        prefix = "n/" + "/".join(rel) + "/"   # 4018 bytes: the rest is the last name
        for total in (4095, 4096):
            p = prefix + "q" * (total - len(prefix))
            assert len(p) == total, (len(p), total)
            bfd = os.open(b, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=bfd))
                out.append("%d: ok" % total)
            except OSError as e:
                out.append("%d: %s" % (total, errno.errorcode[e.errno]))
            finally:
                os.close(bfd)
        # deeper than PATH_MAX from the work directory, reached step by step
        fd = os.open(J(b, "n"), os.O_RDONLY | os.O_DIRECTORY)
        try:
            for c in rel:
                nfd = os.open(c, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = nfd
            for i in range(6):
                os.mkdir("r" * 250, dir_fd=fd)
                nfd = os.open("r" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = nfd
            f = os.open("deepfile", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd)
            os.write(f, b"deep")
            os.close(f)
            st = os.stat("deepfile", dir_fd=fd)
            out.append("deep file: %o %d %s" % (st.st_mode, st.st_size, sorted(os.listdir(fd))))
            os.rename("deepfile", "deepfile2", src_dir_fd=fd, dst_dir_fd=fd)
            os.unlink("deepfile2", dir_fd=fd)
            out.append("renamed and removed")
        finally:
            os.close(fd)
        return out
    step("paths of 4095 and 4096 bytes, and a tree deeper than PATH_MAX", ROOT, deep_paths, ["n"])

    r.sec("nlink")
    step("mkdir k with three subdirectories", ROOT, seq(mkdir("k"), mkdir("k/a"), mkdir("k/b"), mkdir("k/c")),
         ["k", "k/a"])
    step("mkdir below a subdirectory", ROOT, mkdir("k/a/a1"), ["k", "k/a"])
    step("create a file", ROOT, creat("k/f"), ["k", "k/f"])
    step("rmdir a subdirectory", ROOT, rmdir("k/c"), ["k"])
    step("move a subdirectory into another", ROOT, rename("k/b", "k/a/b"), ["k", "k/a"])

    r.sec("times")
    step("mkdir tm; create tm/f", ROOT, seq(mkdir("tm"), creat("tm/f", 0o644, b"0123456789")), ["tm", "tm/f"])
    step("create (parent's times)", ROOT, creat("tm/g", 0o644, b"x"), ["tm", "tm/g"])
    step("failed create (EEXIST)", ROOT, creat("tm/g"), ["tm", "tm/g"])
    step("failed mkdir (EEXIST)", ROOT, mkdir("tm/g"), ["tm", "tm/g"])
    step("unlink", ROOT, unlink("tm/g"), ["tm", "tm/g"])
    step("mkdir", ROOT, mkdir("tm/d"), ["tm", "tm/d"])
    step("rmdir", ROOT, rmdir("tm/d"), ["tm", "tm/d"])
    step("symlink", ROOT, symlink("f", "tm/sl"), ["tm", "tm/sl"])
    step("mkfifo", ROOT, mknod("tm/fifo", stat.S_IFIFO | 0o600), ["tm", "tm/fifo"])
    step("chmod", ROOT, chmod("tm/f", 0o600), ["tm", "tm/f"])
    step("chmod to the same mode", ROOT, chmod("tm/f", 0o600), ["tm/f"])
    step("chown", ROOT, chown("tm/f", U1[1], U1[2]), ["tm/f"])
    step("chown to the same owner", ROOT, chown("tm/f", U1[1], U1[2]), ["tm/f"])
    step("write", ROOT, pwrite("tm/f", b"ab", 0), ["tm", "tm/f"])
    step("write of 0 bytes", ROOT, pwrite("tm/f", b"", 0), ["tm/f"])
    step("truncate(2) to the same size", ROOT, truncate("tm/f", 10), ["tm/f"], kind="truncate-same")
    step("ftruncate to the same size", ROOT, ftruncate("tm/f", 10), ["tm/f"])
    step("truncate(2) to a smaller size", ROOT, truncate("tm/f", 4), ["tm/f"])
    step("truncate(2) to a larger size", ROOT, truncate("tm/f", 100), ["tm/f"])
    step("O_TRUNC of a non-empty file", ROOT, op_open("tm/f", os.O_WRONLY | os.O_TRUNC), ["tm/f"])
    step("O_TRUNC of an empty file", ROOT, op_open("tm/f", os.O_WRONLY | os.O_TRUNC), ["tm/f"])
    step("open O_RDWR and close without I/O", ROOT, op_open("tm/f", os.O_RDWR), ["tm/f"])
    step("write and fsync", ROOT, pwrite("tm/f", b"abc", 0, sync=True), ["tm/f"])
    step("read (atime)", ROOT, op_open("tm/f", os.O_RDONLY, read=True), ["tm/f"], kind="read")
    step("setxattr", ROOT, setxattr("tm/f", "user.k", b"v"), ["tm/f"])
    step("getxattr", ROOT, getxattr("tm/f", "user.k"), ["tm/f"])
    step("removexattr", ROOT, lambda b: os.removexattr(J(b, "tm/f"), "user.k"), ["tm/f"])
    step("setxattr of a directory", ROOT, setxattr("tm", "user.k", b"v"), ["tm"])
    step("removexattr of a directory", ROOT, lambda b: os.removexattr(J(b, "tm"), "user.k"), ["tm"])
    step("chown -1 -1 of a directory", ROOT, chown("tm", -1, -1), ["tm"])
    step("rename within a directory (moved file and parent)", ROOT, rename("tm/f", "tm/f2"), ["tm", "tm/f2"])
    step("rename of a directory to another parent (its times)", ROOT,
         seq(mkdir("tm/d1"), mkdir("tm/d2"), mkdir("tm/d1/mv"), lambda b: time.sleep(TICK),
             rename("tm/d1/mv", "tm/d2/mv")), ["tm/d1", "tm/d2", "tm/d2/mv"])
    step("listing (directory's atime)", ROOT, readdir("tm"), ["tm"], kind="read")
    step("readlink (symlink's atime)", ROOT, readlink("tm/sl"), ["tm/sl"], kind="read")
    step("rename over an existing file (parent's times)", ROOT, seq(creat("tm/h"), lambda b: time.sleep(TICK),
                                                                     rename("tm/h", "tm/f2")), ["tm", "tm/f2"])

    r.sec("access")
    step("set up a/", ROOT,
         seq(mkdir("a"), creat("a/m000", 0o000), creat("a/m644", 0o644), creat("a/m600u", 0o600),
             chown("a/m600u", U1[1], U1[2]), creat("a/m060", 0o644), chmod("a/m060", 0o060),
             chown("a/m060", 0, G_SHARED), creat("a/m006", 0o644), chmod("a/m006", 0o006),
             creat("a/m111", 0o644), chmod("a/m111", 0o111), creat("a/m100", 0o644), chmod("a/m100", 0o100),
             creat("a/m707u", 0o644), chmod("a/m707u", 0o707), chown("a/m707u", U1[1], U1[2]),
             mkdir("a/d700", 0o700), creat("a/d700/f", 0o666), chmod("a/d700/f", 0o666),
             mkdir("a/d711", 0o711), creat("a/d711/f", 0o644), mkdir("a/d000", 0o000),
             symlink("m000", "a/lnk")), ["a"])
    files = ["a/m000", "a/m644", "a/m600u", "a/m060", "a/m006", "a/m111", "a/m100", "a/m707u", "a/d700",
             "a/d700/f", "a/d711", "a/d711/f", "a/d000", "a/lnk", "a/missing", "a/m644/x"]
    for who in (ROOT, U1, U2):
        step("faccessat of every file", who, access(files), [])
        step("faccessat AT_SYMLINK_NOFOLLOW of a symlink", who, access(["a/lnk"], nofollow=True), [])

    r.sec("readdir")
    step("set up rd: a directory, a file, a symlink, a fifo, a socket, devices", ROOT,
         seq(mkdir("rd"), mkdir("rd/sub"), creat("rd/file", 0o644, b"f"), symlink("file", "rd/link"),
             mknod("rd/fifo", stat.S_IFIFO | 0o644), mknod("rd/sock", stat.S_IFSOCK | 0o644),
             mknod("rd/chr", stat.S_IFCHR | 0o644, os.makedev(1, 3)),
             mknod("rd/blk", stat.S_IFBLK | 0o600, os.makedev(7, 200))),
         ["rd", "rd/sub", "rd/file", "rd/link", "rd/fifo", "rd/sock", "rd/chr", "rd/blk"])
    step("readdir with d_type", ROOT, readdir("rd"), ["rd"], kind="read")
    step("readdir of an empty directory", ROOT, readdir("rd/sub"), ["rd/sub"], kind="read")
    step("readdir by a user without read permission", U1, readdir("a/d711"), [],
         kind="read")
    step("readdir of a file", ROOT, readdir("rd/file"), [], kind="read")
    step("mknod of a character device by a user", U1, mknod("o/chr", stat.S_IFCHR | 0o644, os.makedev(1, 3)),
         ["o/chr"])
    step("mkfifo by a user", U1, mknod("o/fifo", stat.S_IFIFO | 0o666), ["o/fifo"])
    step("reading the null device through the mount", ROOT, op_open("rd/chr", os.O_RDONLY, read=True), [],
         kind="dev")
    step("readdir after removing entries", ROOT, seq(unlink("rd/sock"), rmdir("rd/sub"), readdir("rd")), ["rd"],
         kind="read")

    r.sec("xattr")
    step("set up x/", ROOT, seq(mkdir("x"), chmod("x", 0o777)), ["x"])
    step("u1 creates x/w 0666 and x/p 0600", U1, seq(creat("x/w", 0o666), chmod("x/w", 0o666), creat("x/p", 0o600)),
         ["x/w", "x/p"])
    step("setxattr by a non-owner with write permission", U2, setxattr("x/w", "user.a", b"1"), ["x/w"])
    step("setxattr by a non-owner without write permission", U2, setxattr("x/p", "user.a", b"1"), ["x/p"])
    step("getxattr by a non-owner without read permission", U2, getxattr("x/p", "user.a"), ["x/p"])
    step("user xattr on a symlink", U1, seq(symlink("w", "x/sl"), setxattr("x/sl", "user.a", b"1", follow=False)),
         ["x/sl"])
    step("user xattr on a fifo", ROOT, seq(mknod("x/fifo", stat.S_IFIFO | 0o666),
                                           setxattr("x/fifo", "user.a", b"1")), ["x/fifo"])


# ---------------------------------------------------------------------------------------------------------------
# Documented differences (docs/mapping.md). Returns the reason, or None for a defect.

def documented(rec, kvrec, path, field, ref, kv):
    """Why the difference in field of path (None: the step's result) is documented, or None. rec is the step on
    the reference, kvrec on kvfs; ref and kv the two values."""
    kv_paths = kvrec["paths"]
    if rec["kind"] == "link" and rec["res"] == "ok" and kvrec["res"] == "EPERM":
        # and what the link would have changed: the new name, the file's link count and ctime, the parent's times
        return "hard links are not supported: link() fails with EPERM (\"Inode numbers, links, space\")"
    if rec["kind"] == "tmpfile" and path is None and kv in ("EOPNOTSUPP", "ENOTSUP"):
        return "O_TMPFILE is not supported: EOPNOTSUPP (\"Inode numbers, links, space\")"
    if field == "nlink" and kv_paths.get(path, {}).get("type") == "d" and kv == 1:
        return "directories report st_nlink 1 (\"Inode numbers, links, space\")"
    if field == "times" and rec["kind"] == "read" and isinstance(ref, str) and len(ref) == 3 \
            and ref[1:] == kv[1:] and ref[0] == "a" and kv[0] == "-":
        return "atime is never changed by reading (\"Attributes, beside the data\")"
    if field == "times" and kv_paths.get(path, {}).get("type") == "l" and isinstance(kv, str) and ref[0] == "a" \
            and ref[1:] == kv[1:] and kv[0] == "-":
        return "atime is never changed by reading (\"Attributes, beside the data\"): following a symlink reads it"
    if rec["kind"] == "truncate-same" and field == "times" and ref == "-mc" and kv == "---" and WRITEBACK:
        return "with the writeback cache, truncate(2) to a file's own size changes no times (\"Attributes, " \
               "beside the data\")"
    if rec["kind"] == "dev" and kv == "EACCES":
        return "the mount is nodev, as a FUSE mount is by default (\"Inode numbers, links, space\")"
    return None


def compare(ref, kv):
    diffs = []
    for a, b in zip(ref, kv):
        assert a["id"] == b["id"]
        if a["res"] != b["res"]:
            diffs.append((a, None, "result", a["res"], b["res"]))
        for p in a["paths"]:
            pa, pb = a["paths"][p], b["paths"][p]
            for field in sorted(set(pa) | set(pb)):
                if pa.get(field) != pb.get(field):
                    diffs.append((a, p, field, pa.get(field), pb.get(field)))
    kv_by_id = {k["id"]: k for k in kv}
    return [(documented(rec, kv_by_id[rec["id"]], p, field, x, y), rec, p, field, x, y)
            for rec, p, field, x, y in diffs]


def tree(base):
    """Every entry below base (by descriptors: the tree is deeper than PATH_MAX): the fields a remount must keep."""
    out = {}
    for root, dirs, files, rfd in os.fwalk(base):
        rel = os.path.relpath(root, base)
        for n in dirs + files:
            st = os.lstat(n, dir_fd=rfd)
            v = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, None if stat.S_ISDIR(st.st_mode) else st.st_size,
                 st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)
            if stat.S_ISLNK(st.st_mode):
                v += (os.readlink(n, dir_fd=rfd),)
            out[os.path.join(rel, n)] = v
    return out


def remount_check(base, cmd):
    """What the kvfs mount shows before and after a remount (cmd): the caches must have shown what the store keeps."""
    import subprocess
    before = tree(base)
    subprocess.run(["bash", "-c", cmd], check=True)
    after = tree(base)
    names = ("mode", "uid", "gid", "size", "atime", "mtime", "ctime", "target")
    out = []
    for p in sorted(set(before) | set(after)):
        x, y = before.get(p), after.get(p)
        if x == y:
            continue
        if x is None or y is None:
            out.append("%s: %s before the remount, %s after" % (p[:60], x and "present", y and "present"))
            continue
        for i, (a, b) in enumerate(zip(x, y)):
            if a != b:
                out.append("%s %s: %r before the remount, %r after" % (p if len(p) < 40 else p[:37] + "...",
                                                                       names[i], a, b))
    return len(before), out


def fresh(base):
    w = os.path.join(base, "w")
    if os.path.lexists(w):
        for root, dirs, _files in os.walk(w):
            for d in dirs:
                try:
                    os.chmod(os.path.join(root, d), 0o700)
                except OSError:
                    pass
        shutil.rmtree(w)
    os.mkdir(w)
    os.chmod(w, 0o777)
    return w


WRITEBACK = True  # the mount uses the kernel's writeback cache (--no-writeback-cache: it does not)


def main():
    global WRITEBACK
    args = sys.argv[1:]
    verbose = "-v" in args
    WRITEBACK = "--no-writeback-cache" not in args
    only = None
    if "-k" in args:
        only = args[args.index("-k") + 1]
        args.remove(only)
    remount = None
    if "--remount" in args:
        remount = args[args.index("--remount") + 1]
        args.remove(remount)
    args = [a for a in args if a not in ("-v", "-k", "--remount", "--no-writeback-cache")]
    if len(args) != 2 or os.geteuid() != 0:
        sys.stderr.write(__doc__)
        return 2
    os.umask(0o022)
    results = []
    for base in args:
        r = Runner(fresh(base), only)
        t0 = time.monotonic()
        scenario(r)
        results.append(r.records)
        print("# %s: %d steps in %.1f s" % (base, len(r.records), time.monotonic() - t0))
    ref, kv = results
    if verbose:
        for a, b in zip(ref, kv):
            print("%-10s %-4s %s\n    ref:  %s %s\n    kvfs: %s %s" % (a["id"], a["who"], a["desc"], a["res"],
                                                                  a["paths"], b["res"], b["paths"]))
    diffs = compare(ref, kv)
    ndef = 0
    for why, rec, p, field, x, y in diffs:
        what = "result" if p is None else "%s %s" % (p if len(p) < 40 else p[:37] + "...", field)
        line = "[%s] %s (%s): %s: ext4 %r, kvfs %r" % (rec["id"], rec["desc"], rec["who"], what, x, y)
        if why:
            print("documented: " + line + " -- " + why)
        else:
            ndef += 1
            print("DEFECT:     " + line)
    if remount:
        n, lost = remount_check(os.path.join(args[1], "w"), remount)
        for line in lost:
            ndef += 1
            print("DEFECT:     remount: " + line)
        print("# remount: %d entries compared, %d changed" % (n, len(lost)))
    print("# %d steps, %d differences, %d undocumented" % (len(ref), len(diffs), ndef))
    return 1 if ndef else 0


if __name__ == "__main__":
    sys.exit(main())
