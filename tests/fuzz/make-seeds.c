/* SPDX-License-Identifier: MIT */
/* Writes the seed inputs of the fuzz targets whose files lodevd writes itself (the spool,
 * the transfer spool, the job journal) with the real modules, so the seeds are what a device
 * holds: make-seeds CORPUS_DIR (tests/fuzz/corpus). Run it again when a format changes:
 *
 *     build/tests/fuzz/make-seeds tests/fuzz/corpus
 *
 * Torn and damaged variants are made from the good ones; the fuzzer finds the rest. */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "fileio.h"
#include "fuzz.h"
#include "job.h"
#include "spool.h"
#include "transfer-store.h"
#include "util.h"

#define DIE(...)                                                                                   \
        do {                                                                                       \
                fprintf(stderr, __VA_ARGS__);                                                      \
                fputc('\n', stderr);                                                               \
                exit(1);                                                                           \
        } while (0)

static bool endswith(const char *s, const char *suffix) {
        size_t n = strlen(s), k = strlen(suffix);

        return n >= k && streq(s + n - k, suffix);
}

/* A directory image (fuzz.h) of every regular file in dir, names sorted. With cut_suffix, the
 * last file whose name ends so keeps only its first cut bytes (a torn write); with
 * flip_suffix, the first such file has a byte in its middle changed (damage). */
static void write_image(const char *dir, const char *out, const char *cut_suffix, size_t cut,
                        const char *flip_suffix) {
        struct dirent **names;
        int n, last_cut = -1;
        bool flipped = false;
        FILE *f;

        n = scandir(dir, &names, NULL, alphasort);
        if (n < 0)
                DIE("%s: %m", dir);
        for (int i = 0; i < n; i++)
                if (cut_suffix && endswith(names[i]->d_name, cut_suffix))
                        last_cut = i;
        f = fopen(out, "we");
        if (!f)
                DIE("%s: %m", out);
        for (int i = 0, first = 1; i < n; i++) {
                char path[1024];
                size_t size;
                char *data;
                struct stat st;

                snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
                if (names[i]->d_name[0] == '.' || stat(path, &st) < 0 || !S_ISREG(st.st_mode))
                        continue;
                data = fuzz_read_file(path, &size);
                if (!data)
                        DIE("%s: %m", path);
                if (flip_suffix && !flipped && endswith(names[i]->d_name, flip_suffix) &&
                    size > 0) {
                        data[size / 2] ^= 0x20;
                        flipped = true;
                }
                if (i == last_cut && size > cut)
                        size = cut;
                fprintf(f, "%s==> %s\n", first ? "" : "\n", names[i]->d_name);
                fwrite(data, 1, size, f);
                free(data);
                first = 0;
        }
        for (int i = 0; i < n; i++)
                free(names[i]);
        free(names);
        if (fclose(f) != 0)
                DIE("%s: %m", out);
}

/* A seed made from a store's directory: as it is, torn, or damaged (see write_image()). */
typedef struct Variant {
        const char *name;
        const char *cut_suffix;
        size_t cut;
        const char *flip_suffix;
} Variant;

static void write_variants(const char *dir, const char *corpus, const char *target,
                           const Variant *v, size_t n) {
        for (size_t i = 0; i < n; i++) {
                char out[1024];

                snprintf(out, sizeof(out), "%s/%s/%s", corpus, target, v[i].name);
                write_image(dir, out, v[i].cut_suffix, v[i].cut, v[i].flip_suffix);
        }
}

static void make_dir(const char *path) {
        if (mkdir(path, 0700) < 0 && errno != EEXIST)
                DIE("%s: %m", path);
}

static void seeds_spool(const char *corpus) {
        char dir[1024];
        Spool *s;
        uint64_t seq;

        snprintf(dir, sizeof(dir), "%s", fuzz_path("spool"));
        make_dir(dir);
        if (spool_open(dir, 65536, &s) < 0)
                DIE("spool_open");
        /* Small segments (max_bytes / 16): several files, acks in and out of order. */
        for (unsigned i = 0; i < 120; i++) {
                char rec[160];
                int len = snprintf(rec, sizeof(rec),
                                   "{\"value\":%u,\"unit\":\"/min\",\"coding\":[{\"code\":\"8867-4\","
                                   "\"system\":\"http://loinc.org\",\"display\":\"Heart rate\"}]}",
                                   i);

                if (spool_append(s, rec, (size_t) len, &seq) < 0 || spool_sync(s) < 0)
                        DIE("spool_append");
        }
        for (uint64_t a = 1; a <= 40; a++)
                (void) spool_ack(s, a);
        (void) spool_ack(s, 45);
        (void) spool_ack(s, 47);
        if (spool_flush(s) < 0)
                DIE("spool_flush");
        spool_free(s);

        write_variants(dir, corpus, "spool",
                       (const Variant[]) {
                               { "acked-segments", NULL, 0, NULL },
                               { "torn-tail", ".seg", 1000, NULL },
                               { "damaged-record", NULL, 0, ".seg" },
                               { "damaged-head", NULL, 0, "head" },
                       },
                       4);
}

static void seeds_transfers(const char *corpus) {
        static const char *const names[][2] = {
                { "report.pdf", "application/pdf" },
                { "reading 7.csv", "text/csv; charset=utf-8" },
                { "Überweisung.txt", "text/plain" },
        };
        char dir[1024];
        TransferStore *s;

        snprintf(dir, sizeof(dir), "%s", fuzz_path("transfers"));
        if (transfer_store_open(dir, 1 << 20, &s, NULL) < 0)
                DIE("transfer_store_open");
        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                char src[1024];
                TransferCopy *c;
                int fd;

                snprintf(src, sizeof(src), "%s", fuzz_path("source"));
                fd = open(src, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
                if (fd < 0 || write_full(fd, "0123456789abcdef", 4 + 6 * i) < 0)
                        DIE("%s: %m", src);
                if (transfer_copy_begin(s, fd, names[i][0], names[i][1], 1000, &c, NULL) < 0)
                        DIE("transfer_copy_begin");
                while (transfer_copy_step(c, 1 << 20) > 0)
                        ;
                if (transfer_copy_commit(c, NULL) < 0)
                        DIE("transfer_copy_commit");
                transfer_copy_free(c);
                close(fd);
                unlink(src);
        }
        (void) transfer_store_mark_uploading(s, transfer_store_nth(s, 0)->id);
        transfer_store_free(s);

        write_variants(dir, corpus, "transfer-store",
                       (const Variant[]) {
                               { "three", NULL, 0, NULL },
                               { "short-data", ".data", 2, NULL },
                               { "damaged-metadata", NULL, 0, ".json" },
                       },
                       3);
}

static void seed_journal(const char *corpus, const char *name, JobPhase phase, JobStatus status) {
        JobJournal j = JOB_JOURNAL_NULL;
        char dir[512], from[1024], to[1024];
        char *data;
        size_t size;
        FILE *f;

        j.phase = phase;
        j.job_id = strdup("fw-update-2024-03_17");
        j.execution_number = 1;
        j.version_number = 3;
        j.firmware_id = strdup("fw-2.1.0");
        j.deployment_id = strdup("dep-42");
        j.sha256 = strdup("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
        j.size = 1048576;
        if (job_download_file_name(j.job_id, &j.file) < 0)
                DIE("job_download_file_name");
        j.offset = phase == JOB_PHASE_DOWNLOADING ? 524288 : phase > JOB_PHASE_DOWNLOADING ? 1048576 : 0;
        j.attempts = phase >= JOB_PHASE_INSTALLING ? 1 : 0;
        j.boot_id = phase == JOB_PHASE_AWAITING_REBOOT ? strdup("3f0d2c9e-7a41-4b8e-9c55-1d2e3f4a5b6c")
                                                       : NULL;
        j.accepted_usec = UINT64_C(1710000000000000);
        j.updated_usec = UINT64_C(1710000060000000);
        if (status != _JOB_STATUS_INVALID) {
                job_report_reset(&j.report, status);
                if (job_report_set(&j.report, "reason", "installer: exit status 3") < 0 ||
                    job_report_set_progress(&j.report, 100) < 0)
                        DIE("job_report_set");
        }

        snprintf(dir, sizeof(dir), "%s", fuzz_path("job"));
        if (job_journal_save(dir, &j) < 0)
                DIE("job_journal_save %s", name);
        snprintf(from, sizeof(from), "%s/current", dir);
        snprintf(to, sizeof(to), "%s/job-journal/%s", corpus, name);
        data = fuzz_read_file(from, &size);
        f = fopen(to, "we");
        if (!data || !f || fwrite(data, 1, size, f) != size || fclose(f) != 0)
                DIE("%s: %m", to);
        free(data);
        job_journal_done(&j);
}

int main(int argc, char **argv) {
        char sub[1024];

        if (argc != 2)
                DIE("usage: make-seeds CORPUS_DIR");
        for (const char *const *t = (const char *const[]) { "spool", "transfer-store",
                                                            "job-journal", NULL };
             *t; t++) {
                snprintf(sub, sizeof(sub), "%s/%s", argv[1], *t);
                make_dir(sub);
        }
        fuzz_dir_reset();
        seeds_spool(argv[1]);
        seeds_transfers(argv[1]);
        seed_journal(argv[1], "accepted", JOB_PHASE_ACCEPTED, _JOB_STATUS_INVALID);
        seed_journal(argv[1], "downloading", JOB_PHASE_DOWNLOADING, _JOB_STATUS_INVALID);
        seed_journal(argv[1], "installing", JOB_PHASE_INSTALLING, _JOB_STATUS_INVALID);
        seed_journal(argv[1], "awaiting-reboot", JOB_PHASE_AWAITING_REBOOT, _JOB_STATUS_INVALID);
        seed_journal(argv[1], "reporting-failed", JOB_PHASE_REPORTING, JOB_STATUS_FAILED);
        seed_journal(argv[1], "done-succeeded", JOB_PHASE_DONE, JOB_STATUS_SUCCEEDED);
        fuzz_dir_reset();
        rmdir(fuzz_dir());
        return 0;
}
