#!/usr/bin/env python3
"""fsmodel.py — a randomized model test of kvfs's namespace and metadata (driven by tests/bats/fs_model.bats).

Every operation is applied to a reference directory on the machine's own filesystem (REF) and to the same relative
path under the kvfs mount (MNT); the outcome (value, or errno) must be the same. Every few operations the two trees
are compared completely: names (readdir, order-insensitive, no duplicates), types (also readdir's d_type), modes,
owners, sizes, contents, symlink targets, user.* xattrs, and mtimes: to the nanosecond where the test set them with
utimensat and nothing changed them since, else both must be recent (so a time that should have moved on, and did
not, is caught). Remounts and `kvfs put`/`kvfs get` through the control socket are interleaved.

Differences that docs/mapping.md documents are excluded explicitly, each where it is handled (search for "KNOWN").

Usage: fsmodel.py MNT REF DATADIR KVFS HELPERS   (env: KVFS_MODEL_SEED, KVFS_MODEL_OPS, KVFS_MODEL_VERBOSE)
HELPERS is tests/bats/helpers.bash-fs: its fs_remount is called with T, D, M in the environment.
"""

import ctypes
import errno
import os
import random
import stat
import subprocess
import sys
import time

MNT, REF, DATADIR, KVFS, HELPERS = sys.argv[1:6]
SEED = int(os.environ.get("KVFS_MODEL_SEED", "20240611"))
NOPS = int(os.environ.get("KVFS_MODEL_OPS", "1500"))
VERBOSE = os.environ.get("KVFS_MODEL_VERBOSE") == "1"
COMPARE_EVERY = int(os.environ.get("KVFS_MODEL_COMPARE_EVERY", "6"))

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
XATTR_CREATE, XATTR_REPLACE = 1, 2

libc = ctypes.CDLL(None, use_errno=True)
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(Timespec), ctypes.c_int]


def _check(rc):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def renameat2(old, new, flags):
    _check(libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags))


def utimensat(path, atime, mtime, nofollow):
    """atime/mtime: (sec, nsec) with nsec possibly UTIME_NOW/UTIME_OMIT."""
    ts = (Timespec * 2)(Timespec(*atime), Timespec(*mtime))
    _check(libc.utimensat(AT_FDCWD, os.fsencode(path), ts, AT_SYMLINK_NOFOLLOW if nofollow else 0))


class Mismatch(Exception):
    pass


def outcome(fn):
    try:
        return ("ok", fn())
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, str(e.errno)))


def P(root, rel):
    return os.path.join(root, rel) if rel else root


def parent(rel):
    return rel.rpartition("/")[0]


def join(d, name):
    return d + "/" + name if d else name


def under(rel, top):
    """rel is top or below it."""
    return rel == top or rel.startswith(top + "/")


# ---- names ----------------------------------------------------------------------------------------------------------

# Short names that are prefixes of each other and differ in bytes around '/' (0x2f) in sort order — ' ' '!' '%' '-'
# '.' sort before '/', '0' right after — so that listings, which skip each child directory's subtree by key range,
# meet their edge cases. "%25", "%2E", "%2E%2E", "%00" and "%2525" are canonical names of the keys "%", ".", "..",
# NUL, "%25" (docs/mapping.md); "100%", "a%b", "%z", "my%20f", "%41", "a%2Fb", "%FFx", "a%+b" are names whose '%'
# is itself.
NAMES = ["a", "b", "c", "ab", "a b", "a.b", "a.", "a-", "a!", "a0", "b0", " lead", "trail ", "sp ace", "é", "日本語",
         "ünï cødé", "100%", "a%b", "%z", "%25", "%2E", "%2E%2E", "%00", "x%00y", "%2525", "d", "e", "my%20f", "%41",
         "a%2Fb", "%FFx", "a%+b"]
LONG = ["L" * 255, "é" * 127 + "x", "%" * 255, "M" * 200 + " " + "m" * 54]      # 255 bytes each
TOO_LONG = ["L" * 256, "é" * 128, "N" * 300]                                        # over NAME_MAX: ENAMETOOLONG
# KNOWN (docs/mapping.md, "Names that cannot be file names"): a name that is not the canonical spelling of a key —
# an escape ("%25", "%2E") of a byte that needs none there, a '%+' piece of the wrong length, a "%F" file name
# without a directory of that key — cannot be created in kvfs: EINVAL, where a local filesystem creates it. Such
# names are only tried where the reference would succeed, against kvfs alone, expecting EINVAL.
INVALID = ["x%25", "%25%25", "a%2Eb", "abc%+", "q%F", "%25x", "%2E%2E%2E"]

def tool_key(rel):
    """The kvfs tools' text form of the key a mount path names (docs/tools.md): the path itself, but for a '%' that
    starts none of the mount's escapes ("%00", "%25", "%2E") and is followed by [0-9A-F+], which the tools, reading
    every %XX as a byte, write %25."""
    out = []
    for i, ch in enumerate(rel):
        out.append(ch)
        nxt = rel[i + 1:i + 3]
        if ch == "%" and nxt not in ("00", "25", "2E") and nxt[:1] and nxt[0] in "0123456789ABCDEF+":
            out.append("25")
    return "".join(out)


XNAMES = ["user.a", "user.b", "user.color", "user." + "x" * 250]   # the last one: 255 bytes, the longest name
XNAME_TOO_LONG = "user." + "y" * 251                                  # 256 bytes: ERANGE (the kernel checks)
MODES = [0o644, 0o600, 0o755, 0o700, 0o4755, 0o2755, 0o2644, 0o6775, 0o1777, 0o1755, 0o000, 0o777, 0o7777,
         0o444, 0o2070, 0o751]
UIDS = [0, 1, 1000, 4321, 65534]
GIDS = [0, 1, 1000, 8765, 65534]

START_NS = time.time_ns()
RECENT_NS = START_NS - 120 * 10 ** 9  # anything the test did not set itself was stamped after this


class Model:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.log = []
        self.pinned = {}       # rel -> mtime_ns set explicitly (utimensat, or a `kvfs put`'s write time) and kept
        self.implicit = set()  # directories made by `kvfs put` of a key below them, without a record
        self.opno = 0
        self.known = {}        # known differences met: name -> count
        self.remounts = 0

    # -- bookkeeping ---------------------------------------------------------------------------------------------

    def note(self, what):
        self.known[what] = self.known.get(what, 0) + 1

    def entries(self):
        """Every entry of the reference tree: list of (rel, kind) with kind 'd', 'f', 'l'."""
        out = []

        def walk(rel):
            with os.scandir(P(REF, rel)) as it:
                for e in sorted(it, key=lambda e: e.name):
                    r = join(rel, e.name)
                    st = e.stat(follow_symlinks=False)
                    k = "d" if stat.S_ISDIR(st.st_mode) else "l" if stat.S_ISLNK(st.st_mode) else "f"
                    out.append((r, k))
                    if k == "d":
                        walk(r)

        walk("")
        return out

    def kind(self, rel):
        try:
            st = os.lstat(P(REF, rel))
        except OSError:
            return None
        return "d" if stat.S_ISDIR(st.st_mode) else "l" if stat.S_ISLNK(st.st_mode) else "f"

    def unpin(self, rel):
        self.pinned.pop(rel, None)

    def drop(self, rel):
        for k in [k for k in self.pinned if under(k, rel)]:
            del self.pinned[k]
        self.implicit = {k for k in self.implicit if not under(k, rel)}

    def move(self, src, dst):
        self.drop(dst)

        def re(k):
            return dst + k[len(src):] if under(k, src) else k

        self.pinned = {re(k): v for k, v in self.pinned.items()}
        self.implicit = {re(k) for k in self.implicit}

    def swap(self, a, b):
        def re(k):
            if under(k, a):
                return b + k[len(a):]
            if under(k, b):
                return a + k[len(b):]
            return k

        self.pinned = {re(k): v for k, v in self.pinned.items()}
        self.implicit = {re(k) for k in self.implicit}

    def vanish_implicit(self):
        """KNOWN (docs/mapping.md, "Directories"): an implicit directory exists only while some key lies below it,
        so removing its last entry removes it. The reference does the same by hand, and its rmdir stamps the
        parent's times, as kvfs does (docs/design-fs.md, "Directory times, and ctime"): a parent whose mtime was set
        explicitly is no longer pinned to it."""
        gone = []
        changed = True
        while changed:
            changed = False
            for d in sorted(self.implicit, key=len, reverse=True):
                if self.kind(d) == "d" and not os.listdir(P(REF, d)):
                    for x in os.listxattr(P(REF, d)):
                        os.removexattr(P(REF, d), x)
                    os.rmdir(P(REF, d))
                    self.implicit.discard(d)
                    self.unpin(d)
                    self.unpin(parent(d))
                    gone.append(d)
                    changed = True
        # The kernel learns that they vanished a moment after the request (fs_fuse.c's notifier thread): wait for
        # it, so that the next operation does not meet a stale entry. Not stat (it asks the daemon even about a
        # cached entry) but open for writing, which trusts a cached entry (EISDIR).
        def still_there(path):
            try:
                os.close(os.open(path, os.O_WRONLY))
            except OSError as e:
                return e.errno != errno.ENOENT
            return True

        for d in gone:
            deadline = time.time() + 5
            while still_there(P(MNT, d)):
                if time.time() > deadline:
                    # which side kept it: stat asks the daemon even about an entry the kernel caches
                    try:
                        os.lstat(P(MNT, d))
                        daemon = "the daemon still shows it (stat succeeds)"
                    except OSError as e:
                        daemon = f"stat says {errno.errorcode.get(e.errno, e.errno)}: the kernel kept its entry"
                    raise Mismatch(f"implicit directory {d!r} is still there 5 s after its last entry went; {daemon}")
                time.sleep(0.02)
        if gone:
            self.log.append(f"   (implicit directories vanished: {gone!r})")

    def safe_follow(self, rel):
        """Following rel (a symlink, maybe) stays inside both trees."""
        for root in (REF, MNT):
            r = os.path.realpath(P(root, rel))
            if not (r == root or r.startswith(root + "/")):
                return False
        return True

    # -- running one operation on both sides -----------------------------------------------------------------------

    def both(self, desc, fn):
        """fn(root) on the reference, then on kvfs; the outcomes must be the same. Returns the reference's."""
        r = outcome(lambda: fn(REF))
        k = outcome(lambda: fn(MNT))
        self.log.append(f"{self.opno:5d} {desc} -> ref {fmt(r)}, kvfs {fmt(k)}")
        if r != k:
            raise Mismatch(f"outcome differs for {desc}: reference {fmt(r)}, kvfs {fmt(k)}")
        return r

    def kvfs_only(self, desc, fn, want_errno, why):
        """A KNOWN difference: only kvfs is asked, and it must fail with want_errno."""
        k = outcome(lambda: fn(MNT))
        self.log.append(f"{self.opno:5d} {desc} -> kvfs {fmt(k)} (KNOWN: {why})")
        if k != ("err", errno.errorcode[want_errno]):
            raise Mismatch(f"{desc}: kvfs gave {fmt(k)}, documented {errno.errorcode[want_errno]} ({why})")
        self.note(why)

    # -- choosing paths ------------------------------------------------------------------------------------------

    def dirs(self, ents):
        return [""] + [r for r, k in ents if k == "d"]

    def new_name(self):
        x = self.rng.random()
        if x < 0.05:
            return self.rng.choice(LONG)
        if x < 0.08:
            return self.rng.choice(TOO_LONG)
        return self.rng.choice(NAMES)

    def pick_new(self, ents):
        """A path in an existing directory; often it exists already, sometimes its parent is a file."""
        x = self.rng.random()
        if x < 0.05:
            files = [r for r, k in ents if k == "f"]  # not symlinks: a path through one is elsewhere
            if files:
                return join(self.rng.choice(files), self.rng.choice(NAMES))  # ENOTDIR
        if x < 0.08:
            return join(join(self.rng.choice(self.dirs(ents)), "nodir"), "x")  # ENOENT
        return join(self.rng.choice(self.dirs(ents)), self.new_name())

    def pick_any(self, ents, kinds="dfl"):
        cand = [r for r, k in ents if k in kinds]
        if not cand or self.rng.random() < 0.1:
            return self.pick_new(ents)
        return self.rng.choice(cand)

    # -- the operations --------------------------------------------------------------------------------------------

    def content(self):
        x = self.rng.random()
        n = self.rng.randint(4000, 5000) if x < 0.05 else self.rng.randint(0, 60)  # 4 KiB+: a blob (-o blob_threshold)
        return bytes(self.rng.getrandbits(8) for _ in range(n)) if x < 0.5 else \
            ("%d:" % self.opno).encode() * (n // 6 + 1)

    def op_create(self, ents):
        rel = self.pick_new(ents)
        mode = self.rng.choice(MODES)
        excl = self.rng.random() < 0.6
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if excl else os.O_NOFOLLOW)
        if not excl and self.rng.random() < 0.5:
            flags |= os.O_TRUNC
        data = self.content() if self.rng.random() < 0.7 else b""
        existed = self.kind(rel)

        def fn(root):
            fd = os.open(P(root, rel), flags, mode)
            try:
                if data:
                    os.write(fd, data)
            finally:
                os.close(fd)
            return None

        r = self.both(f"create {rel!r} mode {mode:o} {'O_EXCL' if excl else 'O_TRUNC' if flags & os.O_TRUNC else ''}"
                      f" +{len(data)} bytes", fn)
        if r[0] == "ok":
            if existed is None:
                self.unpin(parent(rel))
            if data or existed is None or flags & os.O_TRUNC:
                self.unpin(rel)

    def op_write(self, ents):
        rel = self.pick_any(ents, "fl")
        if not self.safe_follow(rel):
            return
        data = self.content() or b"z"
        how = self.rng.choice(["trunc", "append", "pwrite", "hole"])
        off = self.rng.randint(0, 80) if how == "pwrite" else self.rng.randint(100, 9000)

        def fn(root):
            fl = os.O_WRONLY | (os.O_TRUNC if how == "trunc" else os.O_APPEND if how == "append" else 0)
            fd = os.open(P(root, rel), fl)
            try:
                if how in ("pwrite", "hole"):
                    os.pwrite(fd, data, off)
                else:
                    os.write(fd, data)
                return os.fstat(fd).st_size
            finally:
                os.close(fd)

        r = self.both(f"write {rel!r} {how} {len(data)} bytes" + (f" at {off}" if how in ("pwrite", "hole") else ""),
                      fn)
        if r[0] == "ok":
            self.unpin_resolved(rel)

    def unpin_resolved(self, rel):
        self.unpin(self.real(rel))

    @staticmethod
    def real(rel):
        """The reference entry rel names once every symlink in it is followed (relative to REF, "" for the root)."""
        r = os.path.realpath(P(REF, rel))
        return os.path.relpath(r, REF) if r != REF else ""

    def op_truncate(self, ents):
        rel = self.pick_any(ents, "fld")
        if not self.safe_follow(rel):
            return
        size = self.rng.choice([0, 1, 5, 17, 100, 5000, self.rng.randint(0, 200)])
        try:
            before = os.stat(P(REF, rel)).st_size
        except OSError:
            before = None
        r = self.both(f"truncate {rel!r} {size}", lambda root: os.truncate(P(root, rel), size))
        if r[0] == "ok":
            real = self.real(rel)
            if before == size and real in self.pinned:
                # KNOWN (docs/mapping.md, "Attributes, beside the data"): with the writeback cache, truncate(2) to
                # a file's own size changes no times, where the local filesystem stamps mtime and ctime: the
                # reference gets its pinned mtime back (seed 502 at op 2991 truncated a pinned empty file to 0)
                st = os.stat(P(REF, real))
                os.utime(P(REF, real), ns=(st.st_atime_ns, self.pinned[real]))
                self.log.append("      (KNOWN: a truncate to the file's own size keeps its mtime)")
            else:
                self.unpin_resolved(rel)

    def op_mkdir(self, ents):
        rel = self.pick_new(ents)
        mode = self.rng.choice(MODES)
        r = self.both(f"mkdir {rel!r} {mode:o}", lambda root: os.mkdir(P(root, rel), mode))
        if r[0] == "ok":
            self.unpin(parent(rel))

    def op_rmdir(self, ents):
        rel = self.pick_any(ents, "ddf")
        if not rel:
            return
        r = self.both(f"rmdir {rel!r}", lambda root: os.rmdir(P(root, rel)))
        if r[0] == "ok":
            self.unpin(parent(rel))
            self.drop(rel)
            self.vanish_implicit()

    def op_unlink(self, ents):
        rel = self.pick_any(ents, "fffld")
        r = self.both(f"unlink {rel!r}", lambda root: os.unlink(P(root, rel)))
        if r[0] == "ok":
            self.unpin(parent(rel))
            self.drop(rel)
            self.vanish_implicit()

    def op_symlink(self, ents):
        rel = self.pick_new(ents)
        x = self.rng.random()
        if x < 0.6 and ents:
            # relative, so that it points at the same entry in both trees
            t = self.rng.choice(ents)[0]
            target = os.path.relpath(P(REF, t), P(REF, parent(rel)))
        elif x < 0.8:
            target = self.rng.choice(NAMES)
        else:
            target = self.rng.choice(["dangling/nowhere", "x" * 300, "%41", "a b/c", "é/../é", "./a"])
        r = self.both(f"symlink {rel!r} -> {target!r}", lambda root: os.symlink(target, P(root, rel)))
        if r[0] == "ok":
            self.unpin(parent(rel))

    def op_readlink(self, ents):
        rel = self.pick_any(ents, "llf")
        self.both(f"readlink {rel!r}", lambda root: os.readlink(P(root, rel)))

    def op_stat(self, ents):
        rel = self.pick_any(ents) if self.rng.random() < 0.7 else self.pick_new(ents)
        follow = self.rng.random() < 0.5 and self.safe_follow(rel)

        def fn(root):
            st = os.stat(P(root, rel), follow_symlinks=follow)
            # KNOWN (docs/mapping.md): directories' st_nlink (1) and st_size, st_blocks, atime differ; compared
            # completely by compare().
            return (stat.S_IFMT(st.st_mode), st.st_mode, st.st_uid, st.st_gid,
                    None if stat.S_ISDIR(st.st_mode) else st.st_size)

        self.both(f"{'stat' if follow else 'lstat'} {rel!r}", fn)

    def op_chmod(self, ents):
        rel = self.pick_any(ents, "dfl") if self.rng.random() < 0.97 else ""
        if not self.safe_follow(rel):
            return
        mode = self.rng.choice(MODES)
        r = self.both(f"chmod {rel!r} {mode:o}", lambda root: os.chmod(P(root, rel), mode))
        if r[0] == "ok":
            self.make_explicit(rel, True)

    def make_explicit(self, rel, follow):
        # An attribute change of an implicit directory stores a record for it: it is explicit from then on.
        self.implicit.discard(self.real(rel) if follow else rel)

    def op_chown(self, ents):
        rel = self.pick_any(ents)
        follow = self.rng.random() < 0.4 and self.safe_follow(rel)
        uid = self.rng.choice(UIDS + [-1])
        gid = self.rng.choice(GIDS + [-1])
        r = self.both(f"{'chown' if follow else 'lchown'} {rel!r} {uid}:{gid}",
                      lambda root: os.chown(P(root, rel), uid, gid, follow_symlinks=follow))
        if r[0] == "ok":
            self.make_explicit(rel, follow)

    def op_utime(self, ents):
        rel = self.pick_any(ents) if self.rng.random() < 0.97 else ""
        follow = self.rng.random() < 0.3 and self.safe_follow(rel)

        def t():
            x = self.rng.random()
            if x < 0.08:
                return (0, UTIME_NOW)
            if x < 0.16:
                return (0, UTIME_OMIT)
            return (self.rng.randint(0, 1_600_000_000), self.rng.choice([0, 999_999_999, self.rng.randint(0, 10 ** 9 - 1)]))

        at, mt = t(), t()
        target = self.real(rel) if follow else rel
        r = self.both(f"utimensat {rel!r} atime {at} mtime {mt}{'' if follow else ' NOFOLLOW'}",
                      lambda root: utimensat(P(root, rel), at, mt, not follow))
        if r[0] == "ok":
            self.make_explicit(rel, follow)
            if mt[1] == UTIME_NOW:
                self.unpin(target)
            elif mt[1] != UTIME_OMIT:
                self.pinned[target] = mt[0] * 10 ** 9 + mt[1]
            # (UTIME_OMIT: mtime stays as it was, pinned or not)

    def op_xattr(self, ents):
        rel = self.pick_any(ents)
        follow = self.rng.random() < 0.3 and self.safe_follow(rel)
        name = self.rng.choice(XNAMES) if self.rng.random() < 0.95 else XNAME_TOO_LONG
        what = self.rng.choice(["set", "set", "set", "get", "get", "remove", "list"])
        if what == "set":
            flags = self.rng.choice([0, 0, XATTR_CREATE, XATTR_REPLACE])
            value = bytes(self.rng.getrandbits(8) for _ in range(self.rng.choice([0, 1, 7, 40])))
            r = self.both(f"setxattr {rel!r} {name[:20]!r} {len(value)} bytes flags {flags}{'' if follow else ' NOFOLLOW'}",
                          lambda root: os.setxattr(P(root, rel), name, value, flags, follow_symlinks=follow))
            if r[0] == "ok":
                self.make_explicit(rel, follow)  # as chmod: its attributes must not outlive it
        elif what == "get":
            self.both(f"getxattr {rel!r} {name[:20]!r}",
                      lambda root: os.getxattr(P(root, rel), name, follow_symlinks=follow))
        elif what == "remove":
            self.both(f"removexattr {rel!r} {name[:20]!r}",
                      lambda root: os.removexattr(P(root, rel), name, follow_symlinks=follow))
        else:
            self.both(f"listxattr {rel!r}", lambda root: sorted(
                x for x in os.listxattr(P(root, rel), follow_symlinks=follow) if x.startswith("user.")))

    def op_other_xattr(self, ents):
        # KNOWN (docs/mapping.md, "Extended attributes"): only user.* is stored; security.*, trusted.*,
        # system.posix_acl_* are ENOTSUP on set, get and remove (root may set trusted.* on a local filesystem).
        rel = self.pick_any(ents, "df")
        if self.kind(rel) not in ("d", "f"):
            return
        name = self.rng.choice(["trusted.model", "security.model"])
        what = self.rng.choice(["set", "get", "remove"])
        fn = {"set": lambda root: os.setxattr(P(root, rel), name, b"v"),
              "get": lambda root: os.getxattr(P(root, rel), name),
              "remove": lambda root: os.removexattr(P(root, rel), name)}[what]
        self.kvfs_only(f"{what}xattr {rel!r} {name}", fn, errno.ENOTSUP, "only user.* xattrs are stored")

    def op_link(self, ents):
        src = self.pick_any(ents, "ffld")
        dst = self.pick_new(ents)
        # The reference is asked first (and put back); kvfs must then give the same error, or, where the reference
        # succeeded, EPERM. KNOWN (docs/mapping.md, "Inode numbers, links, space"): hard links are not supported.
        pst = outcome(lambda: os.stat(P(REF, parent(dst))))
        r = outcome(lambda: os.link(P(REF, src), P(REF, dst), follow_symlinks=False))
        if r[0] == "ok":
            os.unlink(P(REF, dst))
            os.utime(P(REF, parent(dst)), ns=(pst[1].st_atime_ns, pst[1].st_mtime_ns))
            self.kvfs_only(f"link {src!r} {dst!r} (reference: ok)",
                           lambda root: os.link(P(root, src), P(root, dst), follow_symlinks=False),
                           errno.EPERM, "hard links are not supported")
        else:
            k = outcome(lambda: os.link(P(MNT, src), P(MNT, dst), follow_symlinks=False))
            self.log.append(f"{self.opno:5d} link {src!r} {dst!r} -> ref {fmt(r)}, kvfs {fmt(k)}")
            if r != k:
                raise Mismatch(f"outcome differs for link {src!r} {dst!r}: reference {fmt(r)}, kvfs {fmt(k)}")

    def op_invalid_name(self, ents):
        # KNOWN (docs/mapping.md): non-canonical names cannot be created: EINVAL. Tried only where the reference
        # would create them (the parent exists, the name does not).
        d = self.rng.choice(self.dirs(ents))
        rel = join(d, self.rng.choice(INVALID))
        if rel.endswith("%F") and self.kind(rel[:-2]) == "d":
            return  # "x%F" beside a directory x is the file of key x: valid
        what = self.rng.choice(["create", "mkdir", "symlink", "rename"])
        if what == "rename":
            src = self.pick_any(ents, "fdl")
            if self.kind(src) is None or under(d, src) or src == "":
                return
            self.kvfs_only(f"rename {src!r} {rel!r}", lambda root: os.rename(P(root, src), P(root, rel)),
                           errno.EINVAL, "non-canonical names are EINVAL")
            return
        fn = {"create": lambda root: os.close(os.open(P(root, rel), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)),
              "mkdir": lambda root: os.mkdir(P(root, rel)),
              "symlink": lambda root: os.symlink("t", P(root, rel))}[what]
        self.kvfs_only(f"{what} {rel!r}", fn, errno.EINVAL, "non-canonical names are EINVAL")

    def op_rename(self, ents):
        src = self.pick_any(ents, "ddffl")
        ds = [r for r, k in ents if k == "d"]
        x = self.rng.random()
        if x < 0.35 or not ents:
            dst = self.pick_new(ents)                       # usually a new name, in any directory
        elif x < 0.7:
            dst = self.pick_any(ents)                       # onto an existing entry
        elif x < 0.8 and ds:
            dst = join(src, self.rng.choice(NAMES))         # into its own subtree (EINVAL for a directory)
        elif x < 0.85:
            dst = parent(src)                               # onto its parent (ENOTEMPTY, or EBUSY for the root)
        elif x < 0.9:
            dst = src                                       # onto itself
        else:
            dst = join(parent(src), self.new_name())        # within its directory
        if not dst:
            return
        fl = self.rng.choice([0, 0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE])
        fname = {0: "", RENAME_NOREPLACE: " NOREPLACE", RENAME_EXCHANGE: " EXCHANGE"}[fl]
        # The kernel follows symlinks in the destination's directory part (not in its last name): with src a symlink
        # to a directory, join(src, name) is an entry in that directory, and the symlink itself moves there. The
        # bookkeeping (pinned mtimes, implicit directories, stamped parents) follows that resolved destination,
        # read before the rename moves the symlink. A directory part leading out of the trees (a relative symlink
        # moved elsewhere) is not tried.
        if not self.safe_follow(parent(dst)):
            return
        rdst = join(self.real(parent(dst)), dst.rpartition("/")[2])
        via = f" (into {rdst!r})" if rdst != dst else ""
        r = self.both(f"rename{fname} {src!r} {dst!r}{via}", lambda root: renameat2(P(root, src), P(root, dst), fl))
        if r[0] != "ok" or src == rdst:
            return
        self.unpin(parent(src))
        self.unpin(parent(rdst))
        if fl == RENAME_EXCHANGE:
            self.swap(src, rdst)
        else:
            self.move(src, rdst)
            self.vanish_implicit()

    def op_open_files(self, ents):
        """Namespace changes under open files: rename or unlink a file (or a directory above it) while it is open,
        write through the descriptor, and compare what fstat and reading it back say."""
        rel = self.pick_any(ents, "f")
        if self.kind(rel) != "f":
            return
        anc = [a for a in self.ancestors(rel)]
        what = self.rng.choice(["unlink", "rename", "rename-dir"] if anc else ["unlink", "rename"])
        data = self.content() or b"open"
        if what == "unlink":
            moved, dst = rel, None
        elif what == "rename":
            moved, dst = rel, self.pick_new(ents)
        else:
            moved = self.rng.choice(anc)
            dst = self.pick_new(ents)
        if dst is not None and (self.kind(dst) is not None or under(dst, moved)):
            return
        fds = {}
        try:
            for root in (REF, MNT):
                fds[root] = os.open(P(root, rel), os.O_RDWR)
            if what == "unlink":
                r = self.both(f"unlink {rel!r} while open", lambda root: os.unlink(P(root, rel)))
            else:
                r = self.both(f"rename {moved!r} {dst!r} while {rel!r} is open",
                              lambda root: os.rename(P(root, moved), P(root, dst)))

            def fn(root):
                fd = fds[root]
                os.pwrite(fd, data, self.rng_off)
                st = os.fstat(fd)
                os.lseek(fd, 0, os.SEEK_SET)
                # KNOWN: st_nlink of a file unlinked while open is not compared (kvfs keeps 1; docs/mapping.md
                # says fstat works "as on a local filesystem" for what it lists: size, mode, owner, times).
                return (st.st_size, st.st_mode, st.st_uid, st.st_gid, os.read(fd, 1 << 16))

            self.rng_off = self.rng.randint(0, 30)
            self.both(f"  pwrite {len(data)} bytes at {self.rng_off} through the open descriptor, fstat, read", fn)
        finally:
            for fd in fds.values():
                os.close(fd)
        if r[0] == "ok":
            if what == "unlink":
                self.unpin(parent(rel))
                self.drop(rel)
                self.vanish_implicit()
            else:
                self.unpin(parent(moved))
                self.unpin(parent(dst))
                self.move(moved, dst)
                self.unpin(dst + rel[len(moved):])
                self.vanish_implicit()
        else:
            self.unpin(rel)

    def ancestors(self, rel):
        out = []
        p = parent(rel)
        while p:
            out.append(p)
            p = parent(p)
        return out

    def op_put(self, ents):
        """`kvfs put` through the control socket while mounted: the key appears as a file with the documented
        defaults (mode 0644, the mounting user, the value's write time), or keeps mode and owner when it had
        attributes. The reference gets the same file by hand."""
        x = self.rng.random()
        files = [r for r, k in ents if k == "f"]
        if x < 0.35 and files:
            rel = self.rng.choice(files)
        elif x < 0.65:
            rel = join(self.rng.choice(self.dirs(ents)), self.rng.choice(NAMES))
        else:
            rel = "/".join(["kv" + self.rng.choice("AB")] + self.rng.sample(["p", "q", "r s"], self.rng.randint(0, 2))
                           + [self.rng.choice(NAMES)])
        # Only where the key names a file or nothing, and every directory above is a directory: else the key would
        # be beside a directory (the "%F" case, tested in fs_keys.bats) or below a file.
        comps = rel.split("/")
        for i in range(1, len(comps)):
            if self.kind("/".join(comps[:i])) not in (None, "d"):
                return
        existed = self.kind(rel)
        if existed not in (None, "f"):
            return
        value = self.content().replace(b"\0", b"0") or b"v"
        value = bytes(b if 0x20 <= b < 0x7f else 0x2e for b in value)  # an argument: printable
        t0 = time.time_ns()
        res = subprocess.run([KVFS, "put", DATADIR, tool_key(rel), value], capture_output=True, timeout=60)
        t1 = time.time_ns()
        self.log.append(f"{self.opno:5d} kvfs put {rel!r} {len(value)} bytes -> {res.returncode} {res.stderr!r}")
        if res.returncode != 0:
            raise Mismatch(f"kvfs put {rel!r} failed: {res.stderr!r}")
        kst = os.lstat(P(MNT, rel))
        if existed:
            ref_st = os.lstat(P(REF, rel))
            want = (ref_st.st_mode, ref_st.st_uid, ref_st.st_gid)
        else:
            want = (stat.S_IFREG | 0o644, os.getuid(), os.getgid())
        got = (kst.st_mode, kst.st_uid, kst.st_gid)
        if got != want:
            raise Mismatch(f"kvfs put {rel!r}: mode/uid/gid {got}, documented {want}")
        # the value's write time, in milliseconds
        if not (t0 - 10 ** 6 <= kst.st_mtime_ns <= t1 + 10 ** 6) or kst.st_mtime_ns % 10 ** 6:
            raise Mismatch(f"kvfs put {rel!r}: mtime {kst.st_mtime_ns} is not the write time ({t0}..{t1})")
        with open(P(MNT, rel), "rb") as f:
            if f.read() != value:
                raise Mismatch(f"kvfs put {rel!r}: the file does not read back the value")
        # The reference: same file, same attributes; directories made for it are implicit. kvfs stamps no
        # directory's time for a put (it is not a change through the mount), so the reference's are put back.
        d = parent(rel)
        made = []
        while d and self.kind(d) is None:
            made.append(d)
            d = parent(d)
        pst = os.stat(P(REF, d))
        for m in reversed(made):
            os.mkdir(P(REF, m))
            os.chmod(P(REF, m), 0o755)  # the defaults of a directory without a record (not a setgid parent's group)
            os.chown(P(REF, m), os.getuid(), os.getgid())
            self.implicit.add(m)
        with open(P(REF, rel), "wb") as f:
            f.write(value)
        if not existed:
            os.chmod(P(REF, rel), 0o644)
            os.chown(P(REF, rel), os.getuid(), os.getgid())
        os.utime(P(REF, rel), ns=(kst.st_atime_ns, kst.st_mtime_ns))
        os.utime(P(REF, d), ns=(pst.st_atime_ns, pst.st_mtime_ns))
        self.pinned[rel] = kst.st_mtime_ns

    def op_get(self, ents):
        files = [r for r, k in ents if k == "f"]
        if not files:
            return
        rel = self.rng.choice(files)
        res = subprocess.run([KVFS, "get", DATADIR, tool_key(rel)], capture_output=True, timeout=60)
        self.log.append(f"{self.opno:5d} kvfs get {rel!r} -> {res.returncode} {len(res.stdout)} bytes")
        with open(P(REF, rel), "rb") as f:
            want = f.read()
        if res.returncode != 0 or res.stdout != want:
            raise Mismatch(f"kvfs get {rel!r}: status {res.returncode} {res.stderr!r}, "
                           f"{len(res.stdout)} bytes, want {len(want)}: {res.stdout[:40]!r} vs {want[:40]!r}")

    def op_umask(self, ents):
        m = self.rng.choice([0o022, 0o022, 0o000, 0o077, 0o027, 0o002])
        os.umask(m)
        self.log.append(f"{self.opno:5d} umask {m:03o}")

    def remount(self):
        self.log.append(f"{self.opno:5d} remount")
        res = subprocess.run(["bash", "-c", '. "$1"; fs_remount', "remount", HELPERS], capture_output=True,
                             timeout=120)
        if res.returncode != 0:
            raise Mismatch(f"remount failed: {res.stdout!r} {res.stderr!r}")
        self.remounts += 1

    # -- the comparison ------------------------------------------------------------------------------------------

    def compare(self, why):
        self.cmp_entry("")
        self.log.append(f"      (trees equal: {why})")

    def cmp_entry(self, rel):
        a = os.lstat(P(REF, rel))
        b = os.lstat(P(MNT, rel))
        name = rel or "/"
        d = stat.S_ISDIR(a.st_mode)

        def diff(what, x, y):
            raise Mismatch(f"{name!r}: {what} differs: reference {x!r}, kvfs {y!r}")

        if a.st_mode != b.st_mode:
            diff("st_mode", oct(a.st_mode), oct(b.st_mode))
        if (a.st_uid, a.st_gid) != (b.st_uid, b.st_gid):
            diff("uid/gid", (a.st_uid, a.st_gid), (b.st_uid, b.st_gid))
        # KNOWN (docs/mapping.md, "Inode numbers, links, space"): directories report st_nlink 1 and st_blocks is the
        # size in 512-byte units; atime is not kept as a local filesystem keeps it (reads do not stamp it). A
        # directory's st_size is the filesystem's own business (ext4: its blocks; kvfs: 4096): not compared.
        if not d:
            if (a.st_size, a.st_nlink) != (b.st_size, b.st_nlink):
                diff("size/nlink", (a.st_size, a.st_nlink), (b.st_size, b.st_nlink))
        if rel in self.pinned:
            want = self.pinned[rel]
            if a.st_mtime_ns != want:
                raise Mismatch(f"model error: {name!r} reference mtime {a.st_mtime_ns}, model {want}")
            if b.st_mtime_ns != want:
                diff("mtime (set explicitly)", a.st_mtime_ns, b.st_mtime_ns)
        else:
            if a.st_mtime_ns < RECENT_NS:
                raise Mismatch(f"model error: {name!r} reference mtime {a.st_mtime_ns} not recent nor pinned")
            if b.st_mtime_ns < RECENT_NS:
                diff("mtime (should have been stamped by a change since it was set)", a.st_mtime_ns, b.st_mtime_ns)
        if b.st_ctime_ns < RECENT_NS:
            diff("ctime (recent)", a.st_ctime_ns, b.st_ctime_ns)
        if stat.S_ISREG(a.st_mode):
            with open(P(REF, rel), "rb") as f:
                x = f.read()
            with open(P(MNT, rel), "rb") as f:
                y = f.read()
            if x != y:
                diff("content", x[:60], y[:60])
        if stat.S_ISLNK(a.st_mode):
            if os.readlink(P(REF, rel)) != os.readlink(P(MNT, rel)):
                diff("symlink target", os.readlink(P(REF, rel)), os.readlink(P(MNT, rel)))
        xa = self.xattrs(P(REF, rel))
        xb = self.xattrs(P(MNT, rel))
        if xa != xb:
            diff("user.* xattrs", xa, xb)
        if d:
            ra = os.listdir(P(REF, rel))
            with os.scandir(P(MNT, rel)) as it:
                ents = list(it)
            rb = [e.name for e in ents]
            if len(set(rb)) != len(rb):
                diff("listing (duplicates)", sorted(ra), sorted(rb))
            if sorted(ra) != sorted(rb):
                diff("listing", sorted(set(ra) - set(rb)), sorted(set(rb) - set(ra)))
            for e in ents:  # readdir's d_type
                t = os.lstat(e.path).st_mode
                if (e.is_dir(follow_symlinks=False), e.is_symlink(), e.is_file(follow_symlinks=False)) != \
                        (stat.S_ISDIR(t), stat.S_ISLNK(t), stat.S_ISREG(t)):
                    diff(f"d_type of {e.name!r}", oct(t), (e.is_dir(follow_symlinks=False), e.is_symlink()))
            for n in sorted(ra):
                self.cmp_entry(join(rel, n))

    @staticmethod
    def xattrs(path):
        out = {}
        for x in sorted(os.listxattr(path, follow_symlinks=False)):
            if x.startswith("user."):
                out[x] = os.getxattr(path, x, follow_symlinks=False)
        return out

    # -- the run -------------------------------------------------------------------------------------------------

    OPS = [("create", 10), ("write", 8), ("truncate", 3), ("mkdir", 7), ("rmdir", 4), ("unlink", 5), ("symlink", 4),
           ("readlink", 2), ("stat", 3), ("chmod", 4), ("chown", 3), ("utime", 7), ("xattr", 8),
           ("other_xattr", 1), ("link", 2), ("invalid_name", 2), ("rename", 14), ("open_files", 2), ("put", 2),
           ("get", 1), ("umask", 1)]

    def run(self):
        os.umask(0o022)
        names = [n for n, _ in self.OPS]
        weights = [w for _, w in self.OPS]
        for self.opno in range(1, NOPS + 1):
            ents = self.entries()
            w = list(weights)
            if len(ents) > 90:  # keep the tree small: favour removals
                for i, n in enumerate(names):
                    if n in ("unlink", "rmdir"):
                        w[i] *= 6
            op = self.rng.choices(names, w)[0]
            getattr(self, "op_" + op)(ents)
            if self.opno % COMPARE_EVERY == 0:
                self.compare(f"after op {self.opno}")
            if self.opno % 250 == 0:
                self.remount()
                self.compare(f"after remount at op {self.opno}")
        self.compare("at the end")
        self.remount()
        self.compare("after the last remount")


def fmt(o):
    if o[0] == "err":
        return o[1]
    v = o[1]
    if isinstance(v, (bytes, str)) and len(v) > 40:
        v = v[:40]
    return f"ok {v!r}" if v is not None else "ok"


def main():
    m = Model(SEED)
    print(f"fsmodel: seed {SEED} (KVFS_MODEL_SEED), {NOPS} operations (KVFS_MODEL_OPS)")
    t = time.time()
    try:
        m.run()
    except Exception as e:  # noqa: BLE001 -- report any failure with the seed and the log
        print(f"FAILED at operation {m.opno} of seed {SEED}: {type(e).__name__}: {e}")
        print("last operations:")
        for line in (m.log if VERBOSE else m.log[-40:]):
            print("  " + line)
        print(f"rerun: KVFS_MODEL_SEED={SEED} KVFS_MODEL_OPS={m.opno} bats -f model tests/bats/fs_model.bats")
        sys.exit(1)
    if VERBOSE:
        print("\n".join(m.log))
    print(f"fsmodel: {NOPS} operations, {m.remounts} remounts, {len(m.pinned)} pinned mtimes, "
          f"{len(m.implicit)} implicit directories at the end, {time.time() - t:.1f} s")
    print("known differences met: " + ", ".join(f"{k} ({v})" for k, v in sorted(m.known.items())))


if __name__ == "__main__":
    main()
