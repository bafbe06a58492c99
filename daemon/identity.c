/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "fileio.h"
#include "identity.h"
#include "topic.h"
#include "util.h"

#define IDENTITY_LINK "identity"
#define IDENTITY_PREFIX "identity-"
#define IDENTITY_PROBE_SIZE (64U * 1024U)

void identity_done(Identity *id) {
        if (!id)
                return;
        free(id->thing_name);
        free(id->cert_path);
        free(id->key_path);
        *id = (Identity) {};
}

char *identity_key_path(const char *state_dir) {
        return strdup_printf("%s/" IDENTITY_LINK "/device.key", state_dir);
}

static int rm_rf_dir(const char *path) {
        _cleanup_close_ int dfd = -EBADF;
        DIR *d;
        struct dirent *de;

        dfd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dfd < 0)
                return -errno;
        d = fdopendir(dfd);
        if (!d)
                return -errno;
        dfd = -EBADF; /* owned by d now */
        while ((de = readdir(d)))
                if (!streq(de->d_name, ".") && !streq(de->d_name, ".."))
                        (void) unlinkat(dirfd(d), de->d_name, 0);
        closedir(d);
        return rmdir(path) < 0 ? -errno : 0;
}

/* Removes identity-* directories that the link does not point to: what an
 * interrupted store or a replaced identity left behind. */
static void remove_stale(const char *state_dir, const char *current) {
        DIR *d = opendir(state_dir);
        struct dirent *de;

        if (!d)
                return;
        while ((de = readdir(d))) {
                _cleanup_free_ char *p = NULL;

                if (strncmp(de->d_name, IDENTITY_PREFIX, strlen(IDENTITY_PREFIX)) != 0)
                        continue;
                if (current && streq(de->d_name, current))
                        continue;
                p = strdup_printf("%s/%s", state_dir, de->d_name);
                if (p)
                        (void) rm_rf_dir(p);
        }
        closedir(d);
}

/* Classifies a failed lookup of a file the identity must have: its absence proves the identity
 * incomplete, any other error proves nothing. */
static int required_file(const char *path) {
        struct stat st;

        if (stat(path, &st) < 0)
                return errno == ENOENT || errno == ENOTDIR || errno == ELOOP ? -EBADMSG : -errno;
        return S_ISREG(st.st_mode) ? 0 : -EBADMSG;
}

int identity_load(const char *state_dir, Identity *ret) {
        _cleanup_free_ char *link = NULL, *dir = NULL, *thing_path = NULL, *thing = NULL;
        _cleanup_(identity_done) Identity id = {};
        char target[PATH_MAX];
        struct stat st;
        ssize_t n;
        int r;

        assert(state_dir);
        assert(ret);

        link = strdup_printf("%s/" IDENTITY_LINK, state_dir);
        if (!link)
                return -ENOMEM;
        n = readlink(link, target, sizeof(target) - 1);
        if (n < 0)
                /* EINVAL: "identity" exists but is not a symlink. Anything else, ENOENT included,
                 * is what it says. */
                return errno == EINVAL ? -EBADMSG : -errno;
        target[n] = '\0';
        if (strchr(target, '/') || !startswith(target, IDENTITY_PREFIX))
                return -EBADMSG;

        dir = strdup_printf("%s/%s", state_dir, target);
        if (!dir)
                return -ENOMEM;
        if (lstat(dir, &st) < 0)
                return errno == ENOENT ? -EBADMSG : -errno;
        if (!S_ISDIR(st.st_mode))
                return -EBADMSG;

        thing_path = strdup_printf("%s/thing-name", link);
        id.cert_path = strdup_printf("%s/device.pem", link);
        id.key_path = strdup_printf("%s/device.key", link);
        if (!thing_path || !id.cert_path || !id.key_path)
                return -ENOMEM;

        r = read_file(thing_path, 4096, &thing, NULL);
        if (IN_SET(r, -ENOENT, -EBADFD, -EFBIG))
                return -EBADMSG; /* missing, not a regular file, or no name at that size */
        if (r < 0)
                return r;
        if (!topic_name_component_valid(strstrip(thing)))
                return -EBADMSG;
        r = required_file(id.cert_path);
        if (r < 0)
                return r;
        r = required_file(id.key_path);
        if (r < 0)
                return r;

        /* Only now that this identity is known to be good may the older ones go. */
        remove_stale(state_dir, target);

        id.thing_name = TAKE_PTR(thing);
        *ret = id;
        id = (Identity) {};
        return 0;
}

static int write_in(const char *dir, const char *name, const char *data, mode_t mode) {
        _cleanup_free_ char *p = strdup_printf("%s/%s", dir, name);
        _cleanup_close_ int fd = -EBADF;
        int r;

        if (!p)
                return -ENOMEM;
        fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
        if (fd < 0)
                return -errno;
        if (fchmod(fd, mode) < 0)
                return -errno;
        r = write_full(fd, data, strlen(data));
        if (r < 0)
                return r;
        return fsync(fd) < 0 ? -errno : 0;
}

int (*identity_fsync_directory_hook)(const char *path) = NULL;

static int fsync_dir(const char *path) {
        if (identity_fsync_directory_hook)
                return identity_fsync_directory_hook(path);
        return fsync_directory_of(path);
}

int identity_store(const char *state_dir, const char *thing_name, const char *cert_pem,
                   const char *key_pem) {
        _cleanup_free_ char *tmpl = NULL, *tmp_link = NULL, *link = NULL, *thing_line = NULL;
        const char *base;
        int r;

        if (!topic_name_component_valid(thing_name))
                return -EINVAL;
        tmpl = strdup_printf("%s/" IDENTITY_PREFIX "XXXXXX", state_dir);
        tmp_link = strdup_printf("%s/" IDENTITY_LINK ".tmp", state_dir);
        link = strdup_printf("%s/" IDENTITY_LINK, state_dir);
        thing_line = strdup_printf("%s\n", thing_name);
        if (!tmpl || !tmp_link || !link || !thing_line)
                return -ENOMEM;
        if (!mkdtemp(tmpl))
                return -errno;
        base = strrchr(tmpl, '/') + 1;

        r = write_in(tmpl, "device.pem", cert_pem, 0644);
        if (r >= 0)
                r = write_in(tmpl, "device.key", key_pem, 0600);
        if (r >= 0)
                r = write_in(tmpl, "thing-name", thing_line, 0644);
        if (r >= 0)
                r = fsync_dir(tmpl);
        if (r >= 0) {
                (void) unlink(tmp_link);
                if (symlink(base, tmp_link) < 0 || rename(tmp_link, link) < 0)
                        r = -errno;
        }
        if (r < 0) {
                (void) unlink(tmp_link);
                (void) rm_rf_dir(tmpl);
                return r;
        }

        /* From here on tmpl is the current identity, whatever happens. The old one stays until
         * identity_load() has read the new one: after a power loss before this sync, the link
         * may still point at it. */
        return fsync_dir(state_dir);
}

int identity_check_writable(const char *state_dir) {
        /* About the size of a certificate, a key and a name, with room to spare. */
        static const char zeros[4096] = {};
        _cleanup_close_ int dfd = -EBADF, fd = -EBADF;
        _cleanup_free_ char *probe = NULL;
        struct statvfs sv;
        int r;

        assert(state_dir);

        dfd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return -errno;
        if (fstatvfs(dfd, &sv) < 0)
                return -errno;
        if (sv.f_flag & ST_RDONLY)
                return -EROFS;
        if ((uint64_t) sv.f_bavail * sv.f_frsize < IDENTITY_SPACE_MIN ||
            (sv.f_files > 0 && sv.f_favail < 8))
                return -ENOSPC;

        /* Not "identity-*": remove_stale() must never see it. */
        probe = strdup_printf("%s/.writable-XXXXXX", state_dir);
        if (!probe)
                return -ENOMEM;
        fd = mkostemp(probe, O_CLOEXEC); /* O_CREAT|O_EXCL, mode 0600 */
        if (fd < 0)
                return -errno;
        r = 0;
        for (size_t i = 0; r >= 0 && i < IDENTITY_PROBE_SIZE / sizeof(zeros); i++)
                r = write_full(fd, zeros, sizeof(zeros));
        if (r >= 0 && fsync(fd) < 0)
                r = -errno;
        if (unlink(probe) < 0 && r >= 0)
                r = -errno;
        return r;
}
