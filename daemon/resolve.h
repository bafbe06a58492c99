/* SPDX-License-Identifier: MIT */
#pragma once

/* Host names resolved off the event loop: getaddrinfo_a() does the lookup in
 * glibc's helper thread, whose only action is to bump an eventfd that the
 * loop watches. A gateway without a network then never blocks on DNS: an
 * attempt to connect starts only once the name resolved. */

#include <stdbool.h>
#include <systemd/sd-event.h>

typedef struct Resolver Resolver;

/* error 0 with the first address as text, or a negative errno and a
 * readable reason (gai_strerror). */
typedef void (*ResolveCallback)(Resolver *r, int error, const char *address, const char *reason,
                                void *userdata);

int resolver_new(sd_event *event, Resolver **ret);
/* Cancels what it can; a lookup glibc is still running is left to finish
 * in the background and its memory to the process's end. */
Resolver *resolver_free(Resolver *r);

/* True when host is an IPv4 or IPv6 address: nothing to resolve. */
bool resolver_is_address(const char *host);

/* Starts a lookup; a lookup started earlier by the same owner token is
 * superseded (its result is dropped). */
int resolver_resolve(Resolver *r, const char *host, unsigned port, const void *owner,
                     ResolveCallback callback, void *userdata);
/* Drops the pending lookup of owner, if any: its callback will not run. */
void resolver_cancel(Resolver *r, const void *owner);
