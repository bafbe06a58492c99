/* SPDX-License-Identifier: MIT */
#pragma once

/* The device identity in the state directory: certificate, private key and
 * thing name. They live together in a directory "identity-XXXXXX" that the
 * symlink "identity" points to; a new identity is written and synced in a
 * fresh directory and the link replaced with one rename(), so a crash at any
 * point leaves the old identity or the new one, never a mix. */

typedef struct Identity {
        char *thing_name;
        char *cert_path; /* <state>/identity/device.pem */
        char *key_path;  /* <state>/identity/device.key, mode 0600 */
} Identity;

void identity_done(Identity *id);

/* Loads the current identity. The error tells the caller what to do, because
 * provisioning anew gives the gateway a new thing name for good:
 *   -ENOENT   there is no identity at all (no "identity" link): provision;
 *   -EBADMSG  the stored identity is provably corrupt (the link is not a
 *             symlink or points at something that is not an identity
 *             directory; thing-name missing, not a regular file or not a
 *             valid name; device.pem or device.key missing or not regular
 *             files): provision;
 *   anything else (-EIO, -EACCES, -EMFILE, -ENOMEM, ...) is passed on as it
 *             is and says nothing about the identity: retry later, never
 *             provision on it.
 * On failure nothing is removed and *ret is untouched. On success, identity-*
 * directories other than the current one (left by an interrupted or
 * superseded identity_store()) are removed: the old identity is kept until
 * the new one has loaded. */
int identity_load(const char *state_dir, Identity *ret);

/* Stores a new identity and makes it the current one. A failure before the
 * link is replaced removes what was written and leaves the current identity
 * as it was. A failure after it (the state directory could not be synced) is
 * returned too, but the new identity is current from then on and nothing is
 * removed: identity_load() finds the new identity, or after a power loss
 * possibly the old one, which is still there. */
int identity_store(const char *state_dir, const char *thing_name, const char *cert_pem,
                   const char *key_pem);

/* Checks, before asking the platform for a certificate and a thing, that the
 * state directory can take a new identity, so that an identity the platform
 * minted is not lost on a failed write: creates, writes, fsyncs and removes a
 * probe file (nothing stays behind), and needs IDENTITY_SPACE_MIN bytes
 * available to unprivileged users. -ENOSPC, -EROFS, -EACCES, -EIO, -EDQUOT,
 * -ENOENT, -ENOTDIR, ... */
#define IDENTITY_SPACE_MIN (1024U * 1024U)
int identity_check_writable(const char *state_dir);

/* Path of the current key file (which may not exist), for permission checks. */
char *identity_key_path(const char *state_dir);

/* For tests: when set, called instead of fsync_directory_of() for the
 * directories identity_store() syncs (the new identity directory, then the
 * state directory). */
extern int (*identity_fsync_directory_hook)(const char *path);
