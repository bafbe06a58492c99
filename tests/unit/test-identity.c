/* SPDX-License-Identifier: MIT */

/* The identity store: what identity_load() makes of every state it can find, that a failure
 * never removes an identity, and the writability probe. Real directories, no mocks, except the
 * fsync hook (a failing fsync cannot be arranged otherwise). */

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "identity.h"
#include "tests.h"
#include "util.h"

#define THING "acct1:6f1c2a4e-58a0-4c1e-9e43-2d8b1b2f0c11"
#define CERT "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
#define KEY "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"

static char base[] = "/tmp/test-identity-XXXXXX";

/* A fresh, empty state directory per case. */
static char *state_new(const char *name) {
        char *p = strdup_printf("%s/%s", base, name);

        if (p && mkdir(p, 0700) < 0) {
                free(p);
                return NULL;
        }
        return p;
}

static void write_text(const char *dir, const char *name, const char *text) {
        _cleanup_free_ char *p = strdup_printf("%s/%s", dir, name);
        FILE *f = fopen(p, "we");

        if (!f)
                return;
        fputs(text, f);
        fclose(f);
}

/* Number of entries in dir other than "." and "..". */
static unsigned count_entries(const char *dir) {
        DIR *d = opendir(dir);
        struct dirent *de;
        unsigned n = 0;

        if (!d)
                return UINT_MAX;
        while ((de = readdir(d)))
                if (!streq(de->d_name, ".") && !streq(de->d_name, ".."))
                        n++;
        closedir(d);
        return n;
}

static void make_dir(const char *dir, const char *name) {
        _cleanup_free_ char *p = strdup_printf("%s/%s", dir, name);

        CHECK_INT(mkdir(p, 0700), 0);
}

static bool exists_in(const char *dir, const char *name) {
        _cleanup_free_ char *p = strdup_printf("%s/%s", dir, name);
        struct stat st;

        return lstat(p, &st) == 0;
}

/* Where the "identity" link points, "" when it cannot be read. */
static const char *current_target(const char *dir) {
        static char target[PATH_MAX];
        _cleanup_free_ char *p = strdup_printf("%s/identity", dir);
        ssize_t n = readlink(p, target, sizeof(target) - 1);

        target[n < 0 ? 0 : n] = '\0';
        return target;
}

/* Builds an identity directory by hand and points the link at it. */
static void make_identity(const char *dir, const char *name, const char *thing, bool cert,
                          bool key) {
        _cleanup_free_ char *d = strdup_printf("%s/%s", dir, name);
        _cleanup_free_ char *link = strdup_printf("%s/identity", dir);

        CHECK_INT(mkdir(d, 0700), 0);
        if (thing)
                write_text(d, "thing-name", thing);
        if (cert)
                write_text(d, "device.pem", CERT);
        if (key)
                write_text(d, "device.key", KEY);
        (void) unlink(link);
        CHECK_INT(symlink(name, link), 0);
}

static void test_store_load(void) {
        _cleanup_free_ char *s = state_new("store"), *first = NULL;
        _cleanup_(identity_done) Identity id = {};
        Identity untouched = { .thing_name = (char *) "x" };
        struct stat st;

        CHECK_INT(identity_load(s, &untouched), -ENOENT);
        CHECK_STR(untouched.thing_name, "x");

        CHECK_INT(identity_store(s, THING, CERT, KEY), 0);
        first = strdup(current_target(s));
        CHECK(strncmp(first, "identity-", 9) == 0);
        CHECK_INT(identity_load(s, &id), 0);
        CHECK_STR(id.thing_name, THING);
        CHECK(stat(id.key_path, &st) == 0 && (st.st_mode & 0777) == 0600);
        CHECK(stat(id.cert_path, &st) == 0 && S_ISREG(st.st_mode));
        identity_done(&id);

        /* A new identity replaces the old one; the old directory stays until the new one has
         * loaded. */
        CHECK_INT(identity_store(s, "acct1:second", CERT, KEY), 0);
        CHECK(!streq(current_target(s), first));
        CHECK(exists_in(s, first));
        CHECK_INT(identity_load(s, &id), 0);
        CHECK_STR(id.thing_name, "acct1:second");
        CHECK(!exists_in(s, first));
        CHECK_INT(count_entries(s), 2); /* the link and its directory */

        CHECK_INT(identity_store(s, "bad/thing", CERT, KEY), -EINVAL);
        CHECK_INT(count_entries(s), 2);
}

/* Every provably corrupt state is -EBADMSG, and loading it removes nothing, not even a
 * directory that would otherwise be stale. */
static void test_corrupt(void) {
        static const struct {
                const char *thing;
                bool cert, key;
        } cases[] = {
                { NULL, true, true },        /* thing-name missing */
                { "a/b\n", true, true },     /* not a valid name */
                { "", true, true },          /* empty */
                { THING "\n", false, true }, /* certificate missing */
                { THING "\n", true, false }, /* key missing */
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *name = strdup_printf("corrupt%zu", i);
                _cleanup_free_ char *s = state_new(name);
                Identity id = {};

                make_identity(s, "identity-cur000", cases[i].thing, cases[i].cert, cases[i].key);
                make_dir(s, "identity-old000");
                CHECK_INT(identity_load(s, &id), -EBADMSG);
                CHECK(id.thing_name == NULL);
                CHECK(exists_in(s, "identity-old000"));
                CHECK(exists_in(s, "identity-cur000"));
        }

        {
                /* The link points at a directory that is gone, at something else, or is no
                 * link at all. */
                _cleanup_free_ char *s = state_new("dangling"), *link = NULL;
                Identity id = {};

                link = strdup_printf("%s/identity", s);
                CHECK_INT(symlink("identity-gone00", link), 0);
                CHECK_INT(identity_load(s, &id), -EBADMSG);
                CHECK_INT(unlink(link), 0);
                CHECK_INT(symlink("../elsewhere", link), 0);
                CHECK_INT(identity_load(s, &id), -EBADMSG);
                CHECK_INT(unlink(link), 0);
                write_text(s, "identity-file00", "x");
                CHECK_INT(symlink("identity-file00", link), 0);
                CHECK_INT(identity_load(s, &id), -EBADMSG);
                CHECK_INT(unlink(link), 0);
                CHECK_INT(mkdir(link, 0700), 0);
                CHECK_INT(identity_load(s, &id), -EBADMSG);
                CHECK(exists_in(s, "identity-file00"));
        }
        {
                /* A thing-name that is a directory is no thing name. */
                _cleanup_free_ char *s = state_new("thingdir"), *p = NULL;
                Identity id = {};

                make_identity(s, "identity-cur000", NULL, true, true);
                p = strdup_printf("%s/identity-cur000/thing-name", s);
                CHECK_INT(mkdir(p, 0700), 0);
                CHECK_INT(identity_load(s, &id), -EBADMSG);
        }
}

/* An error that says nothing about the identity is passed on as it is, never as -ENOENT or
 * -EBADMSG, and removes nothing. */
static void test_transient(void) {
        _cleanup_free_ char *s = state_new("transient"), *file = NULL, *sub = NULL;
        Identity id = {};
        struct rlimit old, low;

        make_identity(s, "identity-cur000", THING "\n", true, true);
        make_dir(s, "identity-old000");

        /* Out of file descriptors, as in a daemon with a leak. */
        CHECK_INT(getrlimit(RLIMIT_NOFILE, &old), 0);
        low = old;
        low.rlim_cur = 0;
        CHECK_INT(setrlimit(RLIMIT_NOFILE, &low), 0);
        CHECK_INT(identity_load(s, &id), -EMFILE);
        CHECK_INT(setrlimit(RLIMIT_NOFILE, &old), 0);
        CHECK(id.thing_name == NULL);
        CHECK(exists_in(s, "identity-old000"));
        CHECK(exists_in(s, "identity-cur000"));

        /* A state directory path that cannot be resolved is not "no identity". */
        write_text(s, "plain", "x");
        file = strdup_printf("%s/plain", s);
        CHECK_INT(identity_load(file, &id), -ENOTDIR);
        sub = strdup_printf("%s/plain/sub", s);
        CHECK_INT(identity_check_writable(sub), -ENOTDIR);

        /* And it still loads once the cause is gone; only then is the stale directory removed. */
        CHECK_INT(identity_load(s, &id), 0);
        CHECK_STR(id.thing_name, THING);
        CHECK(!exists_in(s, "identity-old000"));
        CHECK(exists_in(s, "identity-cur000"));
        identity_done(&id);
}

static const char *fail_path;
static int fail_fsync(const char *path) {
        return fail_path && streq(path, fail_path) ? -EIO : 0;
}

static void test_store_failures(void) {
        _cleanup_free_ char *s = state_new("fsync"), *old = NULL, *mid = NULL;
        Identity id = {};

        CHECK_INT(identity_store(s, THING, CERT, KEY), 0);
        old = strdup(current_target(s));

        /* The state directory is synced after the rename. */
        identity_fsync_directory_hook = fail_fsync;
        fail_path = s;
        CHECK_INT(identity_store(s, "acct1:new", CERT, KEY), -EIO);
        /* The rename happened: the new identity is current and nothing was deleted. */
        mid = strdup(current_target(s));
        CHECK(!streq(mid, old));
        CHECK(exists_in(s, mid));
        CHECK(exists_in(s, old));
        CHECK_INT(identity_load(s, &id), 0);
        CHECK_STR(id.thing_name, "acct1:new");
        identity_done(&id);
        CHECK(!exists_in(s, old));

        identity_fsync_directory_hook = NULL;
}

static int fail_not_state(const char *path) {
        return fail_path && !streq(path, fail_path) ? -EIO : 0;
}

static void test_store_failure_before_rename(void) {
        _cleanup_free_ char *s = state_new("fsync2"), *old = NULL;
        Identity id = {};

        CHECK_INT(identity_store(s, THING, CERT, KEY), 0);
        old = strdup(current_target(s));

        identity_fsync_directory_hook = fail_not_state;
        fail_path = s;
        CHECK_INT(identity_store(s, "acct1:new", CERT, KEY), -EIO);
        identity_fsync_directory_hook = NULL;

        CHECK_STR(current_target(s), old);
        CHECK_INT(count_entries(s), 2); /* the temp directory is gone */
        CHECK_INT(identity_load(s, &id), 0);
        CHECK_STR(id.thing_name, THING);
        identity_done(&id);
}

static void test_check_writable(void) {
        _cleanup_free_ char *s = state_new("writable"), *missing = NULL;

        CHECK_INT(identity_check_writable(s), 0);
        CHECK_INT(count_entries(s), 0);
        missing = strdup_printf("%s/missing", base);
        CHECK_INT(identity_check_writable(missing), -ENOENT);
}

int main(void) {
        if (!mkdtemp(base))
                return 77;
        test_store_load();
        test_corrupt();
        test_transient();
        test_store_failures();
        test_store_failure_before_rename();
        test_check_writable();
        {
                _cleanup_free_ char *cmd = strdup_printf("rm -rf '%s'", base);
                (void) system(cmd);
        }
        return TESTS_DONE();
}
