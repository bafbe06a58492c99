/* SPDX-License-Identifier: MIT */

/* Content types from file names: a small mime.types written here exercises the format
 * (comments, tabs and spaces, several extensions, duplicates, case), then the system's
 * /etc/mime.types the daemon uses. */

#include <sys/stat.h>

#include "fileio.h"
#include "mime.h"
#include "tests.h"
#include "util.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(MimeTable *, mime_table_free);

static char tmpdir[] = "/tmp/test-mime-XXXXXX";

static const char sample[] =
        "# comment line with image/png png\n"
        "\n"
        "   \t \n"
        "application/pdf\t\t\t\tpdf\n"
        "image/jpeg  jpeg jpg\tjpe JFIF\n"
        "text/plain\t\ttxt text # trailing comment csv\n"
        "application/x-empty\n"
        "not-a-type\tbad\n"
        "/nosubtype\tbad2\n"
        "audio/first\tdup\n"
        "audio/second\tdup other\n"
        "application/gzip\tgz\r\n"
        "application/last-line\tlast";

static void test_sample(void) {
        _cleanup_(mime_table_freep) MimeTable *t = NULL;
        _cleanup_free_ char *path = strdup_printf("%s/mime.types", tmpdir);

        CHECK_INT(write_file_atomic(path, sample, strlen(sample), 0644), 0);
        CHECK_INT(mime_table_load(path, &t), 0);
        if (!t)
                return;

        /* pdf jpeg jpg jpe jfif txt text dup other gz last */
        CHECK_INT(mime_table_size(t), 11);
        CHECK_STR(mime_table_lookup(t, "ecg.pdf"), "application/pdf");
        CHECK_STR(mime_table_lookup(t, "ECG.PDF"), "application/pdf");
        CHECK_STR(mime_table_lookup(t, "photo.Jpg"), "image/jpeg");
        CHECK_STR(mime_table_lookup(t, "photo.jpe"), "image/jpeg");
        CHECK_STR(mime_table_lookup(t, "photo.jfif"), "image/jpeg");
        CHECK_STR(mime_table_lookup(t, "notes.text"), "text/plain");
        /* Comments, at the start of a line or after the extensions. */
        CHECK_STR(mime_table_lookup(t, "a.png"), MIME_TYPE_DEFAULT);
        CHECK_STR(mime_table_lookup(t, "a.csv"), MIME_TYPE_DEFAULT);
        /* Lines without a type/subtype are skipped. */
        CHECK_STR(mime_table_lookup(t, "a.bad"), MIME_TYPE_DEFAULT);
        CHECK_STR(mime_table_lookup(t, "a.bad2"), MIME_TYPE_DEFAULT);
        /* The first line that lists an extension wins. */
        CHECK_STR(mime_table_lookup(t, "a.dup"), "audio/first");
        CHECK_STR(mime_table_lookup(t, "a.other"), "audio/second");
        /* CRLF line ends and a last line without '\n'. */
        CHECK_STR(mime_table_lookup(t, "log.tar.gz"), "application/gzip");
        CHECK_STR(mime_table_lookup(t, "x.last"), "application/last-line");
        /* Only the last extension counts. */
        CHECK_STR(mime_table_lookup(t, "report.pdf.txt"), "text/plain");
        CHECK_STR(mime_table_lookup(t, "report.txt.unknown"), MIME_TYPE_DEFAULT);
        /* No extension: none, a dot file, a trailing dot, a dot in a directory name. */
        CHECK_STR(mime_table_lookup(t, "noext"), MIME_TYPE_DEFAULT);
        CHECK_STR(mime_table_lookup(t, ".pdf"), MIME_TYPE_DEFAULT);
        CHECK_STR(mime_table_lookup(t, "file."), MIME_TYPE_DEFAULT);
        CHECK_STR(mime_table_lookup(t, "dir.pdf/file"), MIME_TYPE_DEFAULT);
        CHECK_STR(mime_table_lookup(t, "dir/file.pdf"), "application/pdf");
        CHECK_STR(mime_table_lookup(t, ""), MIME_TYPE_DEFAULT);
        CHECK_STR(mime_table_lookup(NULL, "ecg.pdf"), MIME_TYPE_DEFAULT);
}

static void test_one_shot(void) {
        _cleanup_free_ char *path = strdup_printf("%s/mime.types", tmpdir);
        _cleanup_free_ char *missing = strdup_printf("%s/missing", tmpdir);
        char *type = NULL;

        CHECK_INT(mime_type_from_name(path, "a.pdf", &type), 1);
        CHECK_STR(type, "application/pdf");
        free(type);
        type = NULL;
        CHECK_INT(mime_type_from_name(path, "a.unknownext", &type), 0);
        CHECK_STR(type, MIME_TYPE_DEFAULT);
        free(type);
        type = NULL;
        /* A missing table is reported, and the fallback is given all the same. */
        CHECK_INT(mime_type_from_name(missing, "a.pdf", &type), -ENOENT);
        CHECK_STR(type, MIME_TYPE_DEFAULT);
        free(type);
}

static void test_load_errors(void) {
        _cleanup_free_ char *missing = strdup_printf("%s/missing", tmpdir);
        MimeTable *t = NULL;

        CHECK_INT(mime_table_load(missing, &t), -ENOENT);
        CHECK(!t);
        /* A directory is not a table. */
        CHECK(mime_table_load(tmpdir, &t) < 0);
        CHECK(!t);
}

static void test_system(void) {
        _cleanup_(mime_table_freep) MimeTable *t = NULL;
        int r;

        r = mime_table_load(MIME_TYPES_PATH, &t);
        if (r == -ENOENT && !streq_ptr(getenv("CI"), "true")) {
                printf("# skipping the system table: %s is missing (Debian's media-types)\n",
                       MIME_TYPES_PATH);
                return;
        }
        CHECK_INT(r, 0);
        if (!t)
                return;
        CHECK(mime_table_size(t) > 500);
        CHECK_STR(mime_table_lookup(t, "ecg.pdf"), "application/pdf");
        CHECK_STR(mime_table_lookup(t, "photo.JPG"), "image/jpeg");
        CHECK_STR(mime_table_lookup(t, "photo.jpeg"), "image/jpeg");
        CHECK_STR(mime_table_lookup(t, "log.txt"), "text/plain");
        CHECK_STR(mime_table_lookup(t, "data.json"), "application/json");
        CHECK_STR(mime_table_lookup(t, "noext"), MIME_TYPE_DEFAULT);
        CHECK_STR(mime_table_lookup(t, "x.unknownext"), MIME_TYPE_DEFAULT);
}

int main(void) {
        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return 1;
        }

        test_sample();
        test_one_shot();
        test_load_errors();
        test_system();

        {
                _cleanup_free_ char *path = strdup_printf("%s/mime.types", tmpdir);

                (void) unlink(path);
                (void) rmdir(tmpdir);
        }
        return TESTS_DONE();
}
