/* SPDX-License-Identifier: MIT */
#pragma once

/* lodevd.conf(5): libconfig syntax parsed into a typed struct. The libconfig
 * handle never leaves conf.c. Errors come back as text of the form
 * "FILE:LINE: key: what is wrong" for the caller to log. */

#include <stdbool.h>
#include <stdint.h>

typedef enum ProvisionMethod {
        PROVISION_METHOD_CREATE,
        PROVISION_METHOD_CSR,
        _PROVISION_METHOD_MAX,
        _PROVISION_METHOD_INVALID = -22,
} ProvisionMethod;

typedef struct ConfigParameter {
        char *name;
        char *value; /* literal, or "file:/path" resolved at provisioning time */
        int line;
} ConfigParameter;

typedef struct Config {
        char *path;

        char *endpoint;
        unsigned port;
        char *ca_file;
        char *alpn;
        unsigned keepalive;
        unsigned publish_rate; /* messages per second, 0 = no cap */

        char *claim_cert;
        char *claim_key;
        char *template_name;
        ProvisionMethod method;
        ConfigParameter *parameters;
        size_t n_parameters;

        char *state_dir;
        uint64_t spool_max_bytes;

        uint64_t transfers_max_bytes; /* files waiting to go out */
        uint64_t transfers_max_rate;  /* bytes per second per transfer, 0 = no cap */

        char *http_proxy;
        bool allow_http;

        char *installer;
        unsigned install_timeout;
        char *reboot_command;
        unsigned max_reboot_delay;
        unsigned max_attempts; /* restarts a job may cause before it is failed */
        unsigned reboot_timeout;     /* seconds in the same boot after reboot_command */
        unsigned max_reboot_tries;   /* runs of reboot_command before the rollback */
        uint64_t max_download_bytes; /* firmware without a size in its document */

        int log_level; /* syslog priority, LOG_ERR..LOG_DEBUG */

        /* Source lines of keys naming files, for later checks; 0 = default. */
        int line_ca_file, line_claim_cert, line_claim_key, line_state_dir, line_endpoint,
                line_template;
} Config;

/* Debian's ca-certificates installs Amazon Root CA 1, which AWS IoT Core's endpoints chain
 * to, under this name. Trusting it alone rather than the whole system bundle keeps any other
 * CA from vouching for the platform. */
#define CONFIG_DEFAULT_CA_FILE "/etc/ssl/certs/Amazon_Root_CA_1.pem"

/* Fills *c with the built-in defaults (SPEC §3). */
int config_init_defaults(Config *c);

/* Frees the contents of *c, leaving it zeroed. */
void config_done(Config *c);

/* Loads the file over the defaults. On failure returns -errno (-EINVAL for
 * content errors, -ENOENT for a missing file) and sets *ret_error to an
 * allocated "FILE:LINE: key: message" text; *ret stays untouched. */
int config_load(const char *path, Config *ret, char **ret_error);

/* Checks that a file named by a key is a readable regular file; on failure
 * sets *ret_error to "FILE:LINE: key: PATH: reason". */
int config_check_file(const Config *c, const char *key, const char *path, int line,
                      char **ret_error);

/* Refuses files that group or others can write (following symlinks): the configuration
 * file itself (c->path, when set), platform.ca_file and, when need_claim, the claim
 * certificate and key. A file that does not exist is not checked here (config_check_file()
 * reports it). -EPERM with *ret_error set to "PATH is writable by group or others; refusing
 * to start (chmod go-w it)" for the configuration file, "FILE:LINE: key: PATH is writable
 * ..." for a file named by a key ("FILE: key: PATH ..." when the key is not in the file);
 * another -errno from stat() with "FILE:LINE: key: PATH: reason". */
int config_check_permissions(const Config *c, bool need_claim, char **ret_error);

const char *provision_method_to_string(ProvisionMethod m);
ProvisionMethod provision_method_from_string(const char *s);

/* Resolves a provisioning parameter value: a "file:/path" value is read from
 * that file (at most 4 KiB) and trimmed. Sets *ret_error on failure. */
int config_parameter_resolve(const Config *c, const ConfigParameter *p, char **ret,
                             char **ret_error);
