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

/* -ENOENT when the device has no identity yet; -EBADMSG when the stored one
 * is incomplete or its thing name is not valid. Removes directories left
 * behind by an interrupted identity_store(). */
int identity_load(const char *state_dir, Identity *ret);

/* Stores a new identity and makes it the current one. */
int identity_store(const char *state_dir, const char *thing_name, const char *cert_pem,
                   const char *key_pem);

/* Path of the current key file (which may not exist), for permission checks. */
char *identity_key_path(const char *state_dir);
