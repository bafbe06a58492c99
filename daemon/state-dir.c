/* SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "fileio.h"
#include "state-dir.h"
#include "util.h"

int state_dir_open(const char *path) {
        _cleanup_close_ int fd = -EBADF, parent_fd = -EBADF;
        int r;

        if (isempty(path))
                return -EINVAL;
        r = mkdir_private(path);
        if (r < 0)
                return r;
        fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return -errno;
        if (flock(fd, LOCK_EX | LOCK_NB) < 0)
                return errno == EWOULDBLOCK ? -EBUSY : -errno;
        /* The directory may have just been created: its entry must be durable before anything
         * inside it is promised. */
        parent_fd = openat(fd, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (parent_fd < 0 || fsync(parent_fd) < 0)
                return -errno;
        return TAKE_FD(fd);
}

/* Bytes no file system compresses away (UBIFS and JFFS2 compress, and cannot fallocate). */
static int write_incompressible(int fd, uint64_t size) {
        uint64_t state = random_u64() | 1, done = 0;
        uint64_t buf[512];
        int r;

        while (done < size) {
                size_t n = (size_t) MIN(size - done, (uint64_t) sizeof(buf));

                for (size_t i = 0; i < ELEMENTSOF(buf); i++) {
                        state ^= state >> 12;
                        state ^= state << 25;
                        state ^= state >> 27;
                        buf[i] = state * UINT64_C(0x2545f4914f6cdd1d);
                }
                r = pwrite_full(fd, buf, n, done);
                if (r < 0)
                        return r;
                done += n;
        }
        return fsync(fd) < 0 ? -errno : 0;
}

int state_dir_reserve_fill(StateDirReserve *res) {
        _cleanup_close_ int fd = -EBADF;
        const uint64_t size = STATE_DIR_RESERVE_SIZE;
        struct stat st;
        int r;

        if (res->present)
                return 0;
        fd = openat(res->dir_fd, STATE_DIR_RESERVE_FILE,
                    O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
        if (fd < 0)
                return state_dir_space_errno(-errno);
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EEXIST;
        if ((uint64_t) st.st_size < size || (uint64_t) st.st_blocks * 512 < size) {
                r = fallocate(fd, 0, 0, (off_t) size) < 0 ? -errno : 0;
                if (IN_SET(r, -EOPNOTSUPP, -ENOSYS, -EINVAL))
                        r = write_incompressible(fd, size);
                if (r < 0) {
                        /* Half a reserve would pass for a whole one at the next check. */
                        (void) unlinkat(res->dir_fd, STATE_DIR_RESERVE_FILE, 0);
                        return state_dir_space_errno(r);
                }
        }
        res->present = true;
        return 0;
}

bool state_dir_reserve_release(StateDirReserve *res) {
        if (!res->present)
                return false;
        if (unlinkat(res->dir_fd, STATE_DIR_RESERVE_FILE, 0) < 0 && errno != ENOENT)
                return false;
        res->present = false;
        return true;
}

/* Undoes the octal escapes (\040 for a space) of a mountinfo field, in place. */
static void unescape_octal(char *s) {
        char *w = s;

        for (char *r = s; *r; r++) {
                if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' &&
                    r[3] >= '0' && r[3] <= '7') {
                        *w++ = (char) ((r[1] - '0') << 6 | (r[2] - '0') << 3 | (r[3] - '0'));
                        r += 3;
                } else
                        *w++ = *r;
        }
        *w = '\0';
}

/* Mount point and type of the mount with this id, from /proc/self/mountinfo. */
static void mount_of(uint64_t mnt_id, StateDirSpace *ret) {
        _cleanup_fclose_ FILE *f = fopen("/proc/self/mountinfo", "re");
        _cleanup_free_ char *line = NULL;
        size_t allocated = 0;

        if (!f)
                return;
        while (getline(&line, &allocated, f) > 0) {
                char point[512], type[64];
                unsigned long long id;
                const char *dash;

                /* "36 35 98:0 /root /mnt rw,noatime master:1 - ext4 /dev/sda1 rw" */
                if (sscanf(line, "%llu %*u %*s %*s %511s", &id, point) != 2 || id != mnt_id)
                        continue;
                dash = strstr(line, " - ");
                if (!dash || sscanf(dash + 3, "%63s", type) != 1)
                        type[0] = '\0';
                unescape_octal(point);
                snprintf(ret->mount_point, sizeof(ret->mount_point), "%s", point);
                snprintf(ret->type, sizeof(ret->type), "%s", type);
                return;
        }
}

int state_dir_space(int dir_fd, StateDirSpace *ret) {
        StateDirSpace space = {};
        struct statvfs sv;
        struct statx stx;

        if (fstatvfs(dir_fd, &sv) < 0)
                return -errno;
        space.free_bytes = (uint64_t) sv.f_bavail * sv.f_frsize;
        if (statx(dir_fd, "", AT_EMPTY_PATH, STATX_MNT_ID, &stx) >= 0 &&
            (stx.stx_mask & STATX_MNT_ID))
                mount_of(stx.stx_mnt_id, &space);
        *ret = space;
        return 0;
}
