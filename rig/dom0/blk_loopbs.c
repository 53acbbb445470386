/*
 * blk_loopbs: set the logical block size of a loop device, which busybox's
 * losetup cannot do (util-linux's `losetup -b` would need shared libraries
 * the rig's dom0 does not have).
 *
 *   blk_loopbs /dev/loopN SIZE
 *
 * rig/test_blkdemo.py builds it on the host with `gcc -static -O2` and puts
 * it in dom0's /guest/; Linux blkback then publishes `sector-size` SIZE for
 * a disk on that loop device. Exit status 0 on success, 1 on failure, 2 on
 * bad usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#ifndef LOOP_SET_BLOCK_SIZE
#define LOOP_SET_BLOCK_SIZE 0x4C09 /* Linux 4.14 and later */
#endif

int main(int argc, char **argv)
{
    char *end;
    unsigned long size;
    int fd;

    if (argc != 3) {
        fprintf(stderr, "usage: %s /dev/loopN SIZE\n", argv[0]);
        return 2;
    }
    errno = 0;
    size = strtoul(argv[2], &end, 10);
    if (errno != 0 || *argv[2] == '\0' || *end != '\0' || size < 512 || size > 65536 ||
        (size & (size - 1)) != 0) {
        fprintf(stderr, "%s: SIZE must be a power of two from 512 to 65536\n", argv[0]);
        return 2;
    }
    fd = open(argv[1], O_RDWR);
    if (fd < 0) {
        fprintf(stderr, "%s: open %s: %s\n", argv[0], argv[1], strerror(errno));
        return 1;
    }
    if (ioctl(fd, LOOP_SET_BLOCK_SIZE, size) != 0) {
        fprintf(stderr, "%s: LOOP_SET_BLOCK_SIZE %lu on %s: %s\n", argv[0], size, argv[1],
                strerror(errno));
        close(fd);
        return 1;
    }
    close(fd);
    printf("blk_loopbs: %s has %lu-byte logical blocks\n", argv[1], size);
    return 0;
}
