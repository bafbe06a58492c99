/* SPDX-License-Identifier: MIT */
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "crypto.h"
#include "util.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(EVP_PKEY *, EVP_PKEY_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(X509_REQ *, X509_REQ_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(X509 *, X509_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(BIO *, BIO_free);

/* Copies what was written to a memory BIO into a NUL-terminated string. */
static int bio_to_string(BIO *b, char **ret) {
        char *data, *s;
        long len = BIO_get_mem_data(b, &data);

        if (len <= 0)
                return -EIO;
        s = strndup(data, (size_t) len);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

int crypto_make_key_and_csr(char **ret_key_pem, char **ret_csr_pem) {
        _cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;
        _cleanup_(X509_REQ_freep) X509_REQ *req = NULL;
        _cleanup_(BIO_freep) BIO *kb = NULL, *rb = NULL;
        _cleanup_free_ char *key_pem = NULL, *csr_pem = NULL;
        X509_NAME *name;
        int r;

        key = EVP_EC_gen("P-256");
        if (!key)
                return -EIO;

        req = X509_REQ_new();
        if (!req)
                return -ENOMEM;
        /* AWS IoT takes the subject from its own template; a CN is still
         * expected by many CAs, so name the product. */
        name = X509_REQ_get_subject_name(req);
        if (!X509_REQ_set_version(req, 0) ||
            !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *) "lodevd",
                                        -1, -1, 0) ||
            !X509_REQ_set_pubkey(req, key) || X509_REQ_sign(req, key, EVP_sha256()) <= 0)
                return -EIO;

        kb = BIO_new(BIO_s_mem());
        rb = BIO_new(BIO_s_mem());
        if (!kb || !rb)
                return -ENOMEM;
        if (!PEM_write_bio_PrivateKey(kb, key, NULL, NULL, 0, NULL, NULL) ||
            !PEM_write_bio_X509_REQ(rb, req))
                return -EIO;
        r = bio_to_string(kb, &key_pem);
        if (r < 0)
                return r;
        r = bio_to_string(rb, &csr_pem);
        if (r < 0)
                return r;
        *ret_key_pem = TAKE_PTR(key_pem);
        *ret_csr_pem = TAKE_PTR(csr_pem);
        return 0;
}

int crypto_check_cert_key(const char *cert_pem, const char *key_pem) {
        _cleanup_(BIO_freep) BIO *cb = NULL, *kb = NULL;
        _cleanup_(X509_freep) X509 *cert = NULL;
        _cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;

        cb = BIO_new_mem_buf(cert_pem, -1);
        kb = BIO_new_mem_buf(key_pem, -1);
        if (!cb || !kb)
                return -ENOMEM;
        cert = PEM_read_bio_X509(cb, NULL, NULL, NULL);
        key = PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL);
        if (!cert || !key)
                return -EBADMSG;
        return X509_check_private_key(cert, key) == 1 ? 0 : -EKEYREJECTED;
}
