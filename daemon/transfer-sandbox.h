/* SPDX-License-Identifier: MIT */
#pragma once

/* The sandbox of lodevd-transfer: once its request is read and libcurl is set up, the helper
 * may only do what one HTTP transfer to or from an fd it was given needs. A seccomp allow-list
 * (libseccomp): file I/O on open descriptors, opening files read-only (the CA bundle, the
 * resolver's configuration), memory, threads (libcurl's resolver, the hashing and syncing
 * threads), sockets of the families HTTP and name resolution use, time and signals. Anything
 * else kills the process (SIGSYS): no exec, no ptrace, no file created, renamed or removed,
 * no mount, no new namespace, no ioctl but three harmless ones. no_new_privs is set first.
 * A build with AddressSanitizer has no_new_privs only (its leak check needs ptrace). */

/* 0, or a negative errno when the filter could not be installed (the helper then stops: a
 * transfer never runs without its sandbox). */
int transfer_sandbox_apply(void);
