#!/usr/bin/env python3
"""mixops.py — one process of a random mix of operations on a few names through the mount, and of kvfs del and put
of the same keys behind it, with descriptors kept open across them.

Errors a racing operation may meet (ENOENT, EEXIST, ENOTEMPTY, EBUSY, ...) are expected; an error that means
something broke is printed as "BAD ...": EIO (the kernel marked an inode bad, or kept a write-back error), EFAULT,
ENOMEM or EBADF. Found a daemon deadlock in libfuse (a RENAME of a name onto itself), EIO on descriptors of files a
tool deleted, and EIO from the kernel's time updates of files that were gone.

usage: mixops.py KVFS DATADIR MOUNT SEED SECONDS
Prints "done N" (N operations that succeeded) at the end.
"""
import errno
import os
import random
import subprocess
import sys
import time

kvfs, data, mnt, seed, secs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
rnd = random.Random(seed)
root = os.path.join(mnt, 'mix')
os.makedirs(root, exist_ok=True)
NAMES = ['a', 'b', 'd1/a', 'd1/b', 'd2/a', 'd1/sub/x', 'd2/sub/y']
DIRS = ['d1', 'd2', 'd3', 'd1/sub', 'd2/sub']
BAD = {errno.EIO, errno.EFAULT, errno.ENOMEM, errno.EBADF}


def p(name):
    return os.path.join(root, name)


def one(op, n, m, fds):
    if op == 'write':
        os.makedirs(os.path.dirname(p(n)), exist_ok=True)
        fd = os.open(p(n), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, os.urandom(rnd.randrange(1, 200000)), rnd.randrange(0, 1 << 20))
        finally:
            os.close(fd)
    elif op == 'read':
        with open(p(n), 'rb') as f:
            f.read()
    elif op == 'truncate':
        os.truncate(p(n), rnd.randrange(0, 1 << 20))
    elif op == 'rename':
        os.makedirs(os.path.dirname(p(m)), exist_ok=True)
        os.rename(p(n), p(m))
    elif op == 'rename_dir':
        os.rename(p(rnd.choice(DIRS)), p(rnd.choice(DIRS)))
    elif op == 'unlink':
        os.unlink(p(n))
    elif op == 'mkdir':
        os.makedirs(p(rnd.choice(DIRS)), exist_ok=True)
    elif op == 'rmdir':
        os.rmdir(p(rnd.choice(DIRS)))
    elif op == 'xattr':
        if rnd.random() < 0.5:
            os.setxattr(p(n), 'user.k', os.urandom(rnd.randrange(0, 100)))
        else:
            os.getxattr(p(n), 'user.k')
    elif op == 'tool':
        key = 'mix/' + n
        if rnd.random() < 0.5:
            subprocess.run([kvfs, 'del', data, key], capture_output=True)
        else:
            subprocess.run([kvfs, 'put', data, key], input=os.urandom(rnd.randrange(0, 100000)), capture_output=True)
    elif op == 'keep':
        if len(fds) < 8:
            fds.append(os.open(p(n), rnd.choice([os.O_RDONLY, os.O_RDWR])))
    elif op == 'let_go':
        if fds:
            os.close(fds.pop(rnd.randrange(len(fds))))
    elif op == 'use_kept':
        if fds:
            fd = rnd.choice(fds)
            os.fstat(fd)
            os.pread(fd, 100, 0)
            os.fsync(fd)
    elif op == 'walk':
        for dirpath, _, files in os.walk(root):
            for f in files:
                os.lstat(os.path.join(dirpath, f))


OPS = ['write', 'read', 'truncate', 'rename', 'rename_dir', 'unlink', 'mkdir', 'rmdir', 'xattr', 'tool', 'keep',
       'let_go', 'use_kept', 'walk']
end = time.monotonic() + secs
fds = []
done = 0
while time.monotonic() < end:
    op, n, m = rnd.choice(OPS), rnd.choice(NAMES), rnd.choice(NAMES)
    try:
        one(op, n, m, fds)
        done += 1
    except OSError as e:
        if e.errno in BAD:
            print('BAD', op, n, m, e, flush=True)
for fd in fds:
    try:
        os.close(fd)
    except OSError as e:
        if e.errno in BAD:
            print('BAD close of a kept descriptor', e, flush=True)
print('done', done)
