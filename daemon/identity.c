/* SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "fileio.h"
#include "identity.h"
#include "topic.h"
#include "util.h"

#define IDENTITY_LINK "identity"
#define IDENTITY_PREFIX "identity-"

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

int identity_load(const char *state_dir, Identity *ret) {
        _cleanup_free_ char *link = NULL, *thing_path = NULL, *thing = NULL;
        Identity id = {};
        char target[PATH_MAX];
        ssize_t n;
        int r;

        link = strdup_printf("%s/" IDENTITY_LINK, state_dir);
        if (!link)
                return -ENOMEM;
        n = readlink(link, target, sizeof(target) - 1);
        if (n < 0) {
                r = -errno;
                if (r == -ENOENT)
                        remove_stale(state_dir, NULL);
                return r == -EINVAL ? -EBADMSG : r;
        }
        target[n] = '\0';
        if (strchr(target, '/') ||
            strncmp(target, IDENTITY_PREFIX, strlen(IDENTITY_PREFIX)) != 0)
                return -EBADMSG;
        remove_stale(state_dir, target);

        thing_path = strdup_printf("%s/thing-name", link);
        id.cert_path = strdup_printf("%s/device.pem", link);
        id.key_path = strdup_printf("%s/device.key", link);
        if (!thing_path || !id.cert_path || !id.key_path) {
                identity_done(&id);
                return -ENOMEM;
        }
        r = read_file(thing_path, 4096, &thing, NULL);
        if (r >= 0 && (!file_exists(id.cert_path) || !file_exists(id.key_path)))
                r = -EBADMSG;
        if (r >= 0 && !topic_name_component_valid(strstrip(thing)))
                r = -EBADMSG;
        if (r < 0) {
                identity_done(&id);
                return r == -ENOENT ? -EBADMSG : r;
        }
        id.thing_name = TAKE_PTR(thing);
        *ret = id;
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
                r = fsync_directory_of(tmpl);
        if (r >= 0) {
                (void) unlink(tmp_link);
                if (symlink(base, tmp_link) < 0 || rename(tmp_link, link) < 0)
                        r = -errno;
        }
        if (r >= 0)
                r = fsync_directory_of(state_dir);
        if (r < 0) {
                (void) unlink(tmp_link);
                (void) rm_rf_dir(tmpl);
                return r;
        }
        remove_stale(state_dir, base);
        return 0;
}
