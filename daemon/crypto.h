/* SPDX-License-Identifier: MIT */
#pragma once

/* Key material for provisioning with a CSR: the private key is made here and
 * never leaves the device. OpenSSL only; no I/O. */

/* A new EC P-256 key (PKCS#8 PEM) and a CSR for it (PEM), signed with SHA-256. */
int crypto_make_key_and_csr(char **ret_key_pem, char **ret_csr_pem);

/* 0 when the certificate's public key belongs to the private key; -EBADMSG
 * when either does not parse, -EKEYREJECTED when they do not match. */
int crypto_check_cert_key(const char *cert_pem, const char *key_pem);
