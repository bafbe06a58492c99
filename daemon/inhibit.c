/* SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include "inhibit.h"
#include "util.h"

typedef struct Hold {
        Inhibitor info;
        int fd; /* lodevd's end */
        sd_event_source *source;
        Inhibitors *owner;
} Hold;

struct Inhibitors {
        sd_event *event;
        void (*changed)(void *userdata);
        void *userdata;
        Hold **holds;
        size_t n_holds;
};

static Hold *hold_free(Hold *h) {
        if (!h)
                return NULL;
        sd_event_source_disable_unref(h->source);
        safe_close(h->fd);
        free(h->info.who);
        free(h->info.why);
        free(h->info.owner);
        free(h);
        return NULL;
}

static void hold_remove(Inhibitors *i, Hold *h) {
        for (size_t k = 0; k < i->n_holds; k++)
                if (i->holds[k] == h) {
                        memmove(i->holds + k, i->holds + k + 1,
                                (i->n_holds - k - 1) * sizeof(Hold *));
                        i->n_holds--;
                        break;
                }
        hold_free(h);
}

static int on_hold_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Hold *h = userdata;
        Inhibitors *i = h->owner;
        char buf[256];
        ssize_t n;

        /* Whatever a holder writes is ignored; only the hang-up counts. */
        if (revents & EPOLLIN) {
                n = read(fd, buf, sizeof(buf));
                if (n > 0 || (n < 0 && errno == EAGAIN))
                        if (!(revents & (EPOLLHUP | EPOLLERR)))
                                return 0;
        }
        hold_remove(i, h);
        if (i->changed)
                i->changed(i->userdata);
        return 0;
}

static bool text_valid(const char *s) {
        size_t n = s ? strlen(s) : 0;

        if (n == 0 || n > INHIBITOR_TEXT_MAX || !utf8_is_valid(s, n))
                return false;
        for (const unsigned char *p = (const unsigned char *) s; *p; p++)
                if (*p < 0x20 || *p == 0x7f)
                        return false;
        return true;
}

int inhibitors_add(Inhibitors *i, const char *who, const char *why, const char *owner,
                   int *ret_fd) {
        _cleanup_close_ int theirs = -EBADF;
        size_t mine = 0;
        struct timespec ts;
        Hold *h, **a;
        int p[2], r;

        if (!text_valid(who) || !text_valid(why))
                return -EINVAL;
        owner = strempty(owner);
        for (size_t k = 0; k < i->n_holds; k++)
                if (streq(i->holds[k]->info.owner, owner))
                        mine++;
        if (i->n_holds >= INHIBITORS_MAX || mine >= INHIBITORS_PER_OWNER_MAX)
                return -EUSERS;

        a = realloc(i->holds, (i->n_holds + 1) * sizeof(Hold *));
        if (!a)
                return -ENOMEM;
        i->holds = a;
        h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        h->fd = -EBADF;
        h->owner = i;
        if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) {
                r = -errno;
                hold_free(h);
                return r;
        }
        h->fd = p[0];
        theirs = p[1];
        (void) clock_gettime(CLOCK_REALTIME, &ts);
        h->info.since_usec = (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
        h->info.who = strdup(who);
        h->info.why = strdup(why);
        h->info.owner = strdup(owner);
        if (!h->info.who || !h->info.why || !h->info.owner) {
                hold_free(h);
                return -ENOMEM;
        }
        r = sd_event_add_io(i->event, &h->source, h->fd, EPOLLIN, on_hold_io, h);
        if (r < 0) {
                hold_free(h);
                return r;
        }
        (void) sd_event_source_set_description(h->source, "reboot-inhibitor");
        i->holds[i->n_holds++] = h;
        *ret_fd = TAKE_FD(theirs);
        if (i->changed)
                i->changed(i->userdata);
        return 0;
}

size_t inhibitors_count(const Inhibitors *i) {
        return i ? i->n_holds : 0;
}

const Inhibitor *inhibitors_get(const Inhibitors *i, size_t index) {
        return i && index < i->n_holds ? &i->holds[index]->info : NULL;
}

int inhibitors_new(sd_event *event, void (*changed)(void *userdata), void *userdata,
                   Inhibitors **ret) {
        Inhibitors *i = calloc(1, sizeof(*i));

        if (!i)
                return -ENOMEM;
        i->event = sd_event_ref(event);
        i->changed = changed;
        i->userdata = userdata;
        *ret = i;
        return 0;
}

Inhibitors *inhibitors_free(Inhibitors *i) {
        if (!i)
                return NULL;
        for (size_t k = 0; k < i->n_holds; k++)
                hold_free(i->holds[k]);
        free(i->holds);
        sd_event_unref(i->event);
        free(i);
        return NULL;
}
