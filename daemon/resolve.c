/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <netdb.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#include "resolve.h"
#include "util.h"

typedef struct Lookup {
        struct gaicb req; /* first: glibc keeps a pointer to it */
        struct addrinfo hints;
        char *host;
        char port[8];
        const void *owner; /* NULL once superseded or cancelled */
        ResolveCallback callback;
        void *userdata;
        struct Lookup *next;
} Lookup;

struct Resolver {
        sd_event_source *io;
        int efd;
        Lookup *lookups;
};

/* Runs in glibc's thread: only the eventfd write, nothing of ours. */
static void notify(union sigval sv) {
        uint64_t one = 1;

        (void) write(sv.sival_int, &one, sizeof(one));
}

static void lookup_free(Lookup *l) {
        if (l->req.ar_result)
                freeaddrinfo(l->req.ar_result);
        free(l->host);
        free(l);
}

static int on_done(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Resolver *r = userdata;
        uint64_t n;
        Lookup **p = &r->lookups;

        (void) read(fd, &n, sizeof(n));
        while (*p) {
                Lookup *l = *p;
                int e = gai_error(&l->req);
                char text[INET6_ADDRSTRLEN] = "";
                const char *reason = NULL;

                if (e == EAI_INPROGRESS) {
                        p = &l->next;
                        continue;
                }
                *p = l->next;
                if (e == 0 && l->req.ar_result) {
                        struct addrinfo *ai = l->req.ar_result;
                        const void *a = ai->ai_family == AF_INET6
                                                ? (const void *) &((struct sockaddr_in6 *) ai->ai_addr)->sin6_addr
                                                : (const void *) &((struct sockaddr_in *) ai->ai_addr)->sin_addr;
                        if (!inet_ntop(ai->ai_family, a, text, sizeof(text)))
                                e = EAI_SYSTEM;
                } else if (e == 0)
                        e = EAI_NONAME;
                if (e != 0)
                        reason = e == EAI_SYSTEM ? strerror(errno) : gai_strerror(e);
                if (l->owner)
                        l->callback(r, e == 0 ? 0 : -EHOSTUNREACH, e == 0 ? text : NULL, reason,
                                    l->userdata);
                lookup_free(l);
        }
        return 0;
}

int resolver_new(sd_event *event, Resolver **ret) {
        Resolver *r;
        int k;

        r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        r->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (r->efd < 0) {
                k = -errno;
                free(r);
                return k;
        }
        k = sd_event_add_io(event, &r->io, r->efd, EPOLLIN, on_done, r);
        if (k < 0) {
                safe_close(r->efd);
                free(r);
                return k;
        }
        (void) sd_event_source_set_description(r->io, "resolver");
        *ret = r;
        return 0;
}

Resolver *resolver_free(Resolver *r) {
        bool busy = false;

        if (!r)
                return NULL;
        r->io = sd_event_source_disable_unref(r->io);
        for (Lookup *l = r->lookups, *next; l; l = next) {
                next = l->next;
                if (gai_error(&l->req) == EAI_INPROGRESS && gai_cancel(&l->req) != EAI_CANCELED)
                        busy = true; /* glibc still holds it: leave it, and the eventfd */
                else
                        lookup_free(l);
        }
        if (!busy)
                safe_close(r->efd);
        free(r);
        return NULL;
}

bool resolver_is_address(const char *host) {
        struct in6_addr a;

        return inet_pton(AF_INET, host, &a) == 1 || inet_pton(AF_INET6, host, &a) == 1;
}

void resolver_cancel(Resolver *r, const void *owner) {
        for (Lookup *l = r ? r->lookups : NULL; l; l = l->next)
                if (l->owner == owner)
                        l->owner = NULL; /* it finishes; the result is dropped */
}

int resolver_resolve(Resolver *r, const char *host, unsigned port, const void *owner,
                     ResolveCallback callback, void *userdata) {
        struct gaicb *list[1];
        struct sigevent sev = {};
        Lookup *l;
        int e;

        resolver_cancel(r, owner);
        l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        l->host = strdup(host);
        if (!l->host) {
                free(l);
                return -ENOMEM;
        }
        snprintf(l->port, sizeof(l->port), "%u", port);
        l->hints = (struct addrinfo) { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                       .ai_flags = AI_ADDRCONFIG };
        l->req = (struct gaicb) { .ar_name = l->host, .ar_service = l->port,
                                  .ar_request = &l->hints };
        l->owner = owner;
        l->callback = callback;
        l->userdata = userdata;

        sev.sigev_notify = SIGEV_THREAD;
        sev.sigev_notify_function = notify;
        sev.sigev_value.sival_int = r->efd;
        list[0] = &l->req;
        e = getaddrinfo_a(GAI_NOWAIT, list, 1, &sev);
        if (e != 0) {
                lookup_free(l);
                return e == EAI_MEMORY ? -ENOMEM : -EAGAIN;
        }
        l->next = r->lookups;
        r->lookups = l;
        return 0;
}
