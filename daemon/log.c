/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>

#include "log.h"
#include "util.h"

static int max_level = LOG_INFO;
static int use_journal;
static char *thing;

/* journald sets JOURNAL_STREAM to the device:inode of the stream it gave us;
 * only then is stderr the journal and structured entries worth sending. */
static int stderr_is_journal(void) {
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;

        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
                return 0;
        if (fstat(STDERR_FILENO, &st) < 0)
                return 0;
        return st.st_dev == dev && st.st_ino == ino;
}

void log_setup(int level, int force_stderr) {
        max_level = level;
        use_journal = !force_stderr && stderr_is_journal();
}

void log_set_max_level(int level) {
        max_level = level;
}

int log_get_max_level(void) {
        return max_level;
}

void log_set_thing(const char *t) {
        (void) free_and_strdup(&thing, t);
}

static const char *level_name(int level) {
        static const char *const names[] = {
                [LOG_EMERG] = "emerg",    [LOG_ALERT] = "alert", [LOG_CRIT] = "crit",
                [LOG_ERR] = "error",      [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
                [LOG_INFO] = "info",      [LOG_DEBUG] = "debug",
        };
        return level >= 0 && level < (int) ELEMENTSOF(names) ? names[level] : "?";
}

int log_internal(int level, int error, const char *file, int line, const char *func,
                 const char *message_id, const char *job_id, const char *transfer_id,
                 const char *fmt, ...) {
        char msg[2048];
        va_list ap;

        error = abs(error);
        if (level > max_level)
                return -error;

        /* Let %m in the format refer to the error passed in. */
        errno = error;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);

        if (use_journal) {
                char f[9][2200];
                struct iovec iov[9];
                size_t n = 0;

#define ADD(...) (snprintf(f[n], sizeof(f[n]), __VA_ARGS__), iov[n] = (struct iovec) { f[n], strlen(f[n]) }, n++)
                ADD("MESSAGE=%s", msg);
                ADD("PRIORITY=%d", level);
                ADD("CODE_FILE=%s", file);
                ADD("CODE_LINE=%d", line);
                ADD("CODE_FUNC=%s", func);
                if (error)
                        ADD("ERRNO=%d", error);
                if (message_id)
                        ADD("MESSAGE_ID=%s", message_id);
                if (thing)
                        ADD("LODEV_THING=%s", thing);
                if (job_id)
                        ADD("LODEV_JOB_ID=%s", job_id);
                else if (transfer_id)
                        ADD("LODEV_TRANSFER_ID=%s", transfer_id);
#undef ADD
                (void) sd_journal_sendv(iov, (int) n);
        } else {
                if (max_level >= LOG_DEBUG)
                        fprintf(stderr, "lodevd: %s: %s (%s:%d)\n", level_name(level), msg, file,
                                line);
                else
                        fprintf(stderr, "lodevd: %s: %s\n", level_name(level), msg);
        }
        errno = error;
        return -error;
}
