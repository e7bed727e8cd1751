#!/usr/bin/env python3
"""race_times.py — one role of a race between renames through the mount, kvfs del/put behind it, and opens.

With the kernel's writeback cache, a rename makes the kernel send the file's mtime and ctime at once (a SETATTR of
those two). When the file is gone by then (a kvfs tool deleted it, or another rename moved it), an error from the
daemon is kept on the kernel's inode and the next close(2) of any descriptor of that inode fails with EIO, though
nothing was lost (fs_fuse.c, op_utimens). The `open` role counts such failures.

usage: race_times.py KVFS DATADIR MOUNT ROLE SECONDS   (ROLE: open, rename or tool)
Prints "ROLE OPS errors N".
"""
import os
import subprocess
import sys
import time

kvfs, data, mnt, role, secs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
b, c = os.path.join(mnt, 's/B'), os.path.join(mnt, 's/C')
end = time.monotonic() + secs
errors = ops = 0
while time.monotonic() < end:
    ops += 1
    if role == 'open':
        for p in (b, c):
            try:
                fd = os.open(p, os.O_RDWR)
            except OSError:
                continue  # renamed away or deleted just now: expected
            try:
                os.close(fd)
            except OSError as e:
                errors += 1
                print(f'close of {p}: {e}', file=sys.stderr)
    elif role == 'rename':
        try:
            os.rename(b, c) if ops % 2 else os.rename(c, b)
        except OSError:
            pass  # the other name is gone for now: expected
    elif role == 'tool':
        subprocess.run([kvfs, 'del', data, 's/B', 's/C'], capture_output=True)
        subprocess.run([kvfs, 'put', data, 's/B', 'x'], capture_output=True)
    else:
        sys.exit(f'unknown role {role}')
print(role, ops, 'errors', errors)
