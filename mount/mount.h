/*
 * mount.h — the kvfs mount daemon: `kvfs mount [-f] [-o OPTIONS] DATADIR MOUNTPOINT` (docs/mount.md).
 */
#ifndef KVFS_MOUNT_H
#define KVFS_MOUNT_H

/* Run the mount command. argv[0] is the command's name ("mount" or the program's); the rest are its arguments.
 * Returns once the mount is usable (0; the daemon goes on in the background) or failed (1, with a message on
 * stderr); with -f it returns when the filesystem is unmounted (0 after a clean shutdown). Never calls exit(). */
int kvfs_mount_main(int argc, char **argv);

#endif /* KVFS_MOUNT_H */
