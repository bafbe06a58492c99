/* SPDX-License-Identifier: MIT */
/* The durable record of a firmware job: the journal (check, to and from JSON, load, save, the
 * download offset), the terminal report it keeps, and the name of the download file. */
#include <json-c/json.h>
#include <openssl/evp.h>

#include "fileio.h"
#include "job.h"
#include "json-util.h"
#include "topic.h"
#include "util.h"

/* Counters beyond this are not something this code wrote. */
#define JOURNAL_COUNTER_MAX 100000U
#define BOOT_ID_MAX 64U

/* --- Reports --- */

void job_report_done(JobReport *r) {
        if (!r)
                return;
        for (size_t i = 0; i < r->n_details; i++) {
                free(r->keys[i]);
                free(r->values[i]);
        }
        *r = JOB_REPORT_NULL;
}

void job_report_reset(JobReport *r, JobStatus status) {
        job_report_done(r);
        r->status = status;
}

/* Length of the valid UTF-8 sequence at p (at most len bytes), 0 when invalid. */
static size_t utf8_sequence_len(const unsigned char *p, size_t len) {
        size_t n;

        if (p[0] < 0x80)
                return 1;
        if ((p[0] & 0xe0) == 0xc0)
                n = 2;
        else if ((p[0] & 0xf0) == 0xe0)
                n = 3;
        else if ((p[0] & 0xf8) == 0xf0)
                n = 4;
        else
                return 0;
        if (n > len || !utf8_is_valid((const char *) p, n))
                return 0;
        return n;
}

int job_detail_sanitize(const char *s, char **ret) {
        const size_t max = JOB_STATUS_DETAIL_VALUE_MAX;
        _cleanup_free_ char *out = NULL;
        size_t len, n = 0, start = 0;
        bool cut;

        if (!ret)
                return -EINVAL;
        if (!s) {
                *ret = NULL;
                return 0;
        }
        /* Bounded: a hostile hook may print megabytes without a newline. */
        len = strnlen(s, 4 * max);
        cut = s[len] != '\0';
        out = malloc(len + 4);
        if (!out)
                return -ENOMEM;

        for (size_t i = 0; i < len;) {
                const unsigned char *p = (const unsigned char *) s + i;
                size_t k = utf8_sequence_len(p, len - i);

                if (k == 0) {
                        out[n++] = '?';
                        i++;
                } else if ((k == 1 && (p[0] < 0x20 || p[0] == 0x7f)) ||
                           (k == 2 && p[0] == 0xc2 && p[1] < 0xa0)) {
                        /* C0, DEL and C1 controls: AWS refuses them, and they forge log lines. */
                        out[n++] = ' ';
                        i += k;
                } else {
                        memcpy(out + n, p, k);
                        n += k;
                        i += k;
                }
        }

        while (start < n && out[start] == ' ')
                start++;
        while (n > start && out[n - 1] == ' ')
                n--;
        memmove(out, out + start, n - start);
        n -= start;

        if (n > max)
                cut = true;
        if (cut && n > max - 3)
                n = max - 3;
        if (cut) {
                /* Back off to the start of a character, so the cut splits none. */
                while (n > 0 && ((unsigned char) out[n] & 0xc0) == 0x80)
                        n--;
                while (n > 0 && out[n - 1] == ' ')
                        n--;
                memcpy(out + n, "...", 3);
                n += 3;
        }
        if (n == 0) {
                *ret = NULL;
                return 0;
        }
        out[n] = '\0';
        *ret = TAKE_PTR(out);
        return 0;
}

int job_report_set(JobReport *r, const char *key, const char *value) {
        _cleanup_free_ char *clean = NULL, *k = NULL;
        int rr;

        if (!r || !job_status_detail_key_valid(key))
                return -EINVAL;
        rr = job_detail_sanitize(value, &clean);
        if (rr < 0)
                return rr;

        for (size_t i = 0; i < r->n_details; i++)
                if (streq(r->keys[i], key)) {
                        if (!clean) {
                                /* Nothing left to say: drop the key rather than send "". */
                                free(r->keys[i]);
                                free(r->values[i]);
                                r->n_details--;
                                r->keys[i] = r->keys[r->n_details];
                                r->values[i] = r->values[r->n_details];
                                r->keys[r->n_details] = r->values[r->n_details] = NULL;
                                return 0;
                        }
                        free(r->values[i]);
                        r->values[i] = TAKE_PTR(clean);
                        return 0;
                }
        if (!clean)
                return 0;
        if (r->n_details >= JOB_STATUS_DETAILS_MAX)
                return -E2BIG;
        k = strdup(key);
        if (!k)
                return -ENOMEM;
        r->keys[r->n_details] = TAKE_PTR(k);
        r->values[r->n_details] = TAKE_PTR(clean);
        r->n_details++;
        return 0;
}

int job_report_set_progress(JobReport *r, unsigned percent) {
        char buf[16];

        snprintf(buf, sizeof(buf), "%u", MIN(percent, 100U));
        return job_report_set(r, JOB_DETAIL_PROGRESS, buf);
}

int job_report_copy(const JobReport *r, JobReport *ret) {
        JobReport c = { .status = r->status };

        for (size_t i = 0; i < r->n_details; i++) {
                c.keys[i] = strdup(r->keys[i]);
                c.values[i] = strdup(r->values[i]);
                c.n_details = i + 1;
                if (!c.keys[i] || !c.values[i]) {
                        job_report_done(&c);
                        return -ENOMEM;
                }
        }
        *ret = c;
        return 0;
}

const char *job_report_get(const JobReport *r, const char *key) {
        for (size_t i = 0; r && key && i < r->n_details; i++)
                if (streq(r->keys[i], key))
                        return r->values[i];
        return NULL;
}

int job_report_encode(const JobReport *r, char **ret) {
        if (!r)
                return -EINVAL;
        return message_encode_job_update(r->status, (const char *const *) r->keys,
                                         (const char *const *) r->values, r->n_details, -1, ret);
}

/* --- Download file --- */

int job_download_file_name(const char *job_id, char **ret) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned md_len = 0;
        char hex[33];

        if (!ret || !topic_job_id_valid(job_id))
                return -EINVAL;
        if (EVP_Digest(job_id, strlen(job_id), md, &md_len, EVP_sha256(), NULL) != 1 ||
            md_len < 16)
                return -EIO;
        for (size_t i = 0; i < 16; i++)
                snprintf(hex + 2 * i, 3, "%02x", md[i]);
        *ret = strdup_printf("firmware-%s", hex);
        return *ret ? 0 : -ENOMEM;
}

/* --- Journal --- */

void job_journal_done(JobJournal *j) {
        if (!j)
                return;
        free(j->job_id);
        free(j->firmware_id);
        free(j->deployment_id);
        free(j->sha256);
        free(j->file);
        free(j->boot_id);
        job_report_done(&j->report);
        *j = JOB_JOURNAL_NULL;
}

bool job_boot_id_valid(const char *s) {
        size_t len = strnlen(s, BOOT_ID_MAX + 1);

        if (len == 0 || len > BOOT_ID_MAX)
                return false;
        for (size_t i = 0; i < len; i++)
                if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
                      (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
                        return false;
        return true;
}

static bool lower_hex(const char *s) {
        for (; *s; s++)
                if (!strchr("0123456789abcdef", *s))
                        return false;
        return true;
}

static bool status_final(JobStatus s) {
        return s == JOB_STATUS_SUCCEEDED || s == JOB_STATUS_FAILED || s == JOB_STATUS_REJECTED;
}

/* 0 when j is a journal that may be saved and would load back; -EINVAL otherwise. */
static int journal_check(const JobJournal *j) {
        _cleanup_free_ char *file = NULL, *payload = NULL;
        bool needs_firmware;
        int r;

        if (j->phase <= JOB_PHASE_NONE || j->phase >= _JOB_PHASE_MAX)
                return -EINVAL;
        r = job_download_file_name(j->job_id, &file);
        if (r < 0)
                return r;
        /* The file name is derived, never taken from the journal: a tampered journal must not
         * point the installer at another file. */
        if (!streq_ptr(j->file, file))
                return -EINVAL;
        /* A rollback may follow only an install, of a job that had its firmware. */
        needs_firmware = j->phase >= JOB_PHASE_ACCEPTED && j->phase <= JOB_PHASE_ROLLING_BACK;
        if ((j->firmware_id && !job_id_field_valid(j->firmware_id)) ||
            (j->deployment_id && !job_id_field_valid(j->deployment_id)) ||
            (needs_firmware && (!j->firmware_id || !j->deployment_id)))
                return -EINVAL;
        if (j->sha256 && !(job_sha256_valid(j->sha256) && lower_hex(j->sha256)))
                return -EINVAL;
        if (j->execution_number < -1 || j->version_number < -1 || j->size < -1 ||
            j->offset > INT64_MAX || j->failed_offset > INT64_MAX ||
            (j->size >= 0 && (j->offset > (uint64_t) j->size ||
                              j->failed_offset > (uint64_t) j->size)) ||
            j->download_tries > JOURNAL_COUNTER_MAX || j->attempts > JOURNAL_COUNTER_MAX ||
            j->reboot_tries > JOURNAL_COUNTER_MAX ||
            j->accepted_usec > INT64_MAX || j->updated_usec > INT64_MAX)
                return -EINVAL;
        if (j->boot_id && !job_boot_id_valid(j->boot_id))
                return -EINVAL;

        if (j->report.status == _JOB_STATUS_INVALID) {
                if (j->phase == JOB_PHASE_REPORTING || j->report.n_details > 0)
                        return -EINVAL;
        } else {
                if (!status_final(j->report.status) ||
                    !IN_SET(j->phase, JOB_PHASE_ROLLING_BACK, JOB_PHASE_REPORTING,
                            JOB_PHASE_DONE))
                        return -EINVAL;
                /* The encoder knows the platform's rules for statusDetails. */
                r = job_report_encode(&j->report, &payload);
                if (r < 0)
                        return r == -ENOMEM ? r : -EINVAL;
        }
        return 0;
}

/* A string member, left out when s is NULL. */
static int json_add_optional_string(json_object *obj, const char *key, const char *s) {
        return s ? json_add_string(obj, key, s) : 0;
}

static int journal_to_json(const JobJournal *j, char **ret) {
        _cleanup_json_ json_object *root = NULL;
        const char *s;
        int r;

        root = json_object_new_object();
        if (!root)
                return -ENOMEM;
        if ((r = json_add_int64(root, "version", JOB_JOURNAL_VERSION)) < 0 ||
            (r = json_add_optional_string(root, "jobId", j->job_id)) < 0 ||
            (r = json_add_optional_string(root, "phase", job_phase_to_string(j->phase))) < 0 ||
            (r = json_add_optional_string(root, "firmwareId", j->firmware_id)) < 0 ||
            (r = json_add_optional_string(root, "deploymentId", j->deployment_id)) < 0 ||
            (r = json_add_optional_string(root, "sha256", j->sha256)) < 0 ||
            (r = json_add_optional_string(root, "file", j->file)) < 0 ||
            (r = json_add_int64(root, "offset", (int64_t) j->offset)) < 0 ||
            (r = json_add_int64(root, "failedOffset", (int64_t) j->failed_offset)) < 0 ||
            (r = json_add_int64(root, "downloadTries", j->download_tries)) < 0 ||
            (r = json_add_int64(root, "attempts", j->attempts)) < 0 ||
            (r = json_add_int64(root, "rebootTries", j->reboot_tries)) < 0 ||
            (r = json_add_optional_string(root, "bootId", j->boot_id)) < 0 ||
            (r = json_add_int64(root, "acceptedAt", (int64_t) j->accepted_usec)) < 0 ||
            (r = json_add_int64(root, "updatedAt", (int64_t) j->updated_usec)) < 0)
                return r;
        if (j->execution_number >= 0 &&
            (r = json_add_int64(root, "executionNumber", j->execution_number)) < 0)
                return r;
        if (j->version_number >= 0 &&
            (r = json_add_int64(root, "versionNumber", j->version_number)) < 0)
                return r;
        if (j->size >= 0 && (r = json_add_int64(root, "size", j->size)) < 0)
                return r;
        if (j->report.status != _JOB_STATUS_INVALID) {
                json_object *details;

                r = json_add_optional_string(root, "status", job_status_to_string(j->report.status));
                if (r < 0)
                        return r;
                r = json_add(root, "statusDetails", details = json_object_new_object());
                if (r < 0)
                        return r;
                for (size_t i = 0; i < j->report.n_details; i++) {
                        r = json_add_optional_string(details, j->report.keys[i], j->report.values[i]);
                        if (r < 0)
                                return r;
                }
        }

        s = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY |
                                                         JSON_C_TO_STRING_NOSLASHESCAPE);
        if (!s)
                return -ENOMEM;
        *ret = strdup_printf("%s\n", s);
        return *ret ? 0 : -ENOMEM;
}

static int journal_get_string(json_object *root, const char *key, char **ret) {
        return json_member_string(root, key, JOB_JOURNAL_SIZE_MAX, ret);
}

/* Counters, offsets and time stamps are never negative. */
static int journal_get_int(json_object *root, const char *key, int64_t def, int64_t *ret) {
        return json_member_integer(root, key, 0, JSON_INTEGER_MAX, def, ret);
}

static int journal_from_json(json_object *root, JobJournal *ret) {
        _cleanup_(job_journal_done) JobJournal j = JOB_JOURNAL_NULL;
        _cleanup_free_ char *phase = NULL, *status = NULL;
        int64_t version, offset, failed_offset, tries, attempts, reboot_tries, accepted, updated;
        json_object *details;
        int r;

        /* The version first: a newer one may mean anything, and is not read at all. */
        r = journal_get_int(root, "version", -1, &version);
        if (r < 0 || version < 1)
                return r == -ENOMEM ? r : -EBADMSG;
        if (version > JOB_JOURNAL_VERSION)
                return -EPROTONOSUPPORT;

        if ((r = journal_get_string(root, "phase", &phase)) < 0 ||
            (r = journal_get_string(root, "jobId", &j.job_id)) < 0 ||
            (r = journal_get_string(root, "firmwareId", &j.firmware_id)) < 0 ||
            (r = journal_get_string(root, "deploymentId", &j.deployment_id)) < 0 ||
            (r = journal_get_string(root, "sha256", &j.sha256)) < 0 ||
            (r = journal_get_string(root, "file", &j.file)) < 0 ||
            (r = journal_get_string(root, "bootId", &j.boot_id)) < 0 ||
            (r = journal_get_string(root, "status", &status)) < 0 ||
            (r = journal_get_int(root, "executionNumber", -1, &j.execution_number)) < 0 ||
            (r = journal_get_int(root, "versionNumber", -1, &j.version_number)) < 0 ||
            (r = journal_get_int(root, "size", -1, &j.size)) < 0 ||
            (r = journal_get_int(root, "offset", -1, &offset)) < 0 ||
            (r = journal_get_int(root, "failedOffset", 0, &failed_offset)) < 0 ||
            (r = journal_get_int(root, "downloadTries", 0, &tries)) < 0 ||
            (r = journal_get_int(root, "attempts", -1, &attempts)) < 0 ||
            /* Version 1 had no reboot tries: the first reboot counts from here. */
            (r = journal_get_int(root, "rebootTries", 0, &reboot_tries)) < 0 ||
            (r = journal_get_int(root, "acceptedAt", 0, &accepted)) < 0 ||
            (r = journal_get_int(root, "updatedAt", 0, &updated)) < 0)
                return r == -ENOMEM ? r : -EBADMSG;
        if (offset < 0 || attempts < 0 || tries > JOURNAL_COUNTER_MAX ||
            attempts > JOURNAL_COUNTER_MAX || reboot_tries > JOURNAL_COUNTER_MAX)
                return -EBADMSG;
        /* Version 1 knew no rollback. */
        if (version < 2 && streq_ptr(phase, "rolling-back"))
                return -EBADMSG;
        j.phase = job_phase_from_string(phase);
        j.offset = (uint64_t) offset;
        j.failed_offset = (uint64_t) failed_offset;
        j.download_tries = (unsigned) tries;
        j.attempts = (unsigned) attempts;
        j.reboot_tries = (unsigned) reboot_tries;
        j.accepted_usec = (uint64_t) accepted;
        j.updated_usec = (uint64_t) updated;

        if (status) {
                j.report.status = job_status_from_string(status);
                if (j.report.status < 0)
                        return -EBADMSG;
        }
        r = json_member_object(root, "statusDetails", &details);
        if (r < 0)
                return r;
        if (details) {
                if (!status || json_object_object_length(details) > (int) JOB_STATUS_DETAILS_MAX)
                        return -EBADMSG;
                json_object_object_foreach(details, key, value) {
                        if (!json_object_is_type(value, json_type_string))
                                return -EBADMSG;
                        if (j.report.n_details >= JOB_STATUS_DETAILS_MAX)
                                return -EBADMSG;
                        j.report.keys[j.report.n_details] = strdup(key);
                        j.report.values[j.report.n_details] =
                                strdup(json_object_get_string(value));
                        j.report.n_details++;
                        if (!j.report.keys[j.report.n_details - 1] ||
                            !j.report.values[j.report.n_details - 1])
                                return -ENOMEM;
                }
        }

        r = journal_check(&j);
        if (r < 0)
                return r == -ENOMEM ? r : -EBADMSG;
        *ret = j;
        j = JOB_JOURNAL_NULL;
        return 0;
}

static char *journal_path(const char *dir) {
        return strdup_printf("%s/" JOB_JOURNAL_FILE, dir);
}

int job_journal_load(const char *dir, JobJournal *ret) {
        _cleanup_free_ char *path = NULL, *data = NULL;
        _cleanup_json_ json_object *root = NULL;
        size_t len;
        int r;

        if (!dir || !ret)
                return -EINVAL;
        path = journal_path(dir);
        if (!path)
                return -ENOMEM;
        r = read_file(path, JOB_JOURNAL_SIZE_MAX, &data, &len);
        if (r < 0)
                return r;
        r = json_object_parse(data, len, JOB_JOURNAL_SIZE_MAX, &root);
        if (r < 0)
                return r == -ENOMEM ? r : -EBADMSG;
        return journal_from_json(root, ret);
}

int job_journal_save(const char *dir, const JobJournal *j) {
        _cleanup_free_ char *path = NULL, *text = NULL;
        int r;

        if (!dir || !j)
                return -EINVAL;
        r = journal_check(j);
        if (r < 0)
                return r;
        r = journal_to_json(j, &text);
        if (r < 0)
                return r;
        r = mkdir_private(dir);
        if (r < 0)
                return r;
        path = journal_path(dir);
        if (!path)
                return -ENOMEM;
        return write_file_atomic(path, text, strlen(text), 0600);
}

int job_journal_set_aside(const char *dir) {
        _cleanup_free_ char *path = NULL, *aside = NULL;

        if (!dir)
                return -EINVAL;
        path = journal_path(dir);
        aside = strdup_printf("%s/" JOB_JOURNAL_FILE ".newer", dir);
        if (!path || !aside)
                return -ENOMEM;
        if (rename(path, aside) < 0)
                return -errno;
        return fsync_directory_of(dir);
}

int job_journal_remove(const char *dir) {
        _cleanup_free_ char *path = NULL;

        if (!dir)
                return -EINVAL;
        path = journal_path(dir);
        if (!path)
                return -ENOMEM;
        if (unlink(path) < 0)
                return errno == ENOENT ? 0 : -errno;
        return fsync_directory_of(dir);
}

int job_journal_save_offset(const char *dir, JobJournal *j, uint64_t offset, uint64_t now_usec) {
        uint64_t old_offset, old_usec;
        int r;

        if (!dir || !j || j->phase != JOB_PHASE_DOWNLOADING ||
            (j->size >= 0 && offset > (uint64_t) j->size) || offset > INT64_MAX)
                return -EINVAL;
        old_offset = j->offset;
        old_usec = j->updated_usec;
        j->offset = offset;
        j->updated_usec = now_usec;
        r = job_journal_save(dir, j);
        if (r < 0) {
                j->offset = old_offset;
                j->updated_usec = old_usec;
        }
        return r;
}
