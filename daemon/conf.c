/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <libconfig.h>
#include <stddef.h>
#include <sys/stat.h>
#include <syslog.h>

#include "config.h"
#include "conf.h"
#include "fileio.h"
#include "topic.h"
#include "util.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(config_t *, config_destroy);

/* A provisioning parameter read from a file ("file:PATH") is at most this long. */
#define PARAMETER_FILE_MAX 4096U
#define WRITABLE_ERROR "is writable by group or others; refusing to start (chmod go-w it)"

typedef enum KeyType {
        KEY_STRING,
        KEY_UINT,
        KEY_UINT64,
        KEY_BOOL,
        KEY_METHOD,
        KEY_LOG_LEVEL,
        KEY_GROUP,
        KEY_PARAMETERS,
} KeyType;

typedef struct KeyDef {
        const char *group; /* NULL for the top level */
        const char *name;
        KeyType type;
        size_t offset;
        uint64_t min, max; /* for numbers */
        size_t line_offset; /* where to remember the source line, 0 = nowhere */
} KeyDef;

#define OFF(f) offsetof(Config, f)
#define NOLINE 0

static const KeyDef keys[] = {
        { NULL, "platform", KEY_GROUP, 0, 0, 0, NOLINE },
        { NULL, "provisioning", KEY_GROUP, 0, 0, 0, NOLINE },
        { NULL, "spool", KEY_GROUP, 0, 0, 0, NOLINE },
        { NULL, "transfers", KEY_GROUP, 0, 0, 0, NOLINE },
        { NULL, "http", KEY_GROUP, 0, 0, 0, NOLINE },
        { NULL, "firmware", KEY_GROUP, 0, 0, 0, NOLINE },
        { NULL, "state_dir", KEY_STRING, OFF(state_dir), 0, 0, OFF(line_state_dir) },
        { NULL, "log_level", KEY_LOG_LEVEL, OFF(log_level), 0, 0, NOLINE },
        { "platform", "endpoint", KEY_STRING, OFF(endpoint), 0, 0, OFF(line_endpoint) },
        { "platform", "port", KEY_UINT, OFF(port), 1, 65535, NOLINE },
        { "platform", "ca_file", KEY_STRING, OFF(ca_file), 0, 0, OFF(line_ca_file) },
        { "platform", "alpn", KEY_STRING, OFF(alpn), 0, 0, NOLINE },
        /* AWS IoT Core accepts keep-alives from 30 to 1200 seconds. */
        { "platform", "keepalive", KEY_UINT, OFF(keepalive), 30, 1200, NOLINE },
        { "platform", "publish_rate", KEY_UINT, OFF(publish_rate), 0, 100000, NOLINE },
        { "provisioning", "claim_cert", KEY_STRING, OFF(claim_cert), 0, 0, OFF(line_claim_cert) },
        { "provisioning", "claim_key", KEY_STRING, OFF(claim_key), 0, 0, OFF(line_claim_key) },
        { "provisioning", "template", KEY_STRING, OFF(template_name), 0, 0, OFF(line_template) },
        { "provisioning", "method", KEY_METHOD, OFF(method), 0, 0, NOLINE },
        { "provisioning", "parameters", KEY_PARAMETERS, 0, 0, 0, NOLINE },
        { "spool", "max_bytes", KEY_UINT64, OFF(spool_max_bytes), 65536, UINT64_C(1) << 40, NOLINE },
        { "transfers", "max_bytes", KEY_UINT64, OFF(transfers_max_bytes), 65536,
          UINT64_C(1) << 44, NOLINE },
        { "transfers", "max_rate", KEY_UINT64, OFF(transfers_max_rate), 0, UINT64_C(1) << 40,
          NOLINE },
        { "http", "proxy", KEY_STRING, OFF(http_proxy), 0, 0, NOLINE },
        { "http", "allow_http", KEY_BOOL, OFF(allow_http), 0, 0, NOLINE },
        { "firmware", "installer", KEY_STRING, OFF(installer), 0, 0, NOLINE },
        { "firmware", "install_timeout", KEY_UINT, OFF(install_timeout), 1, 7 * 24 * 3600, NOLINE },
        { "firmware", "reboot_command", KEY_STRING, OFF(reboot_command), 0, 0, NOLINE },
        { "firmware", "max_reboot_delay", KEY_UINT, OFF(max_reboot_delay), 0, 7 * 24 * 3600, NOLINE },
        { "firmware", "max_attempts", KEY_UINT, OFF(max_attempts), 1, 100, NOLINE },
        { "firmware", "reboot_timeout", KEY_UINT, OFF(reboot_timeout), 10, 7 * 24 * 3600, NOLINE },
        { "firmware", "max_reboot_tries", KEY_UINT, OFF(max_reboot_tries), 1, 100, NOLINE },
        { "firmware", "max_download_bytes", KEY_UINT64, OFF(max_download_bytes), 65536,
          UINT64_C(1) << 44, NOLINE },
};

static const char *const default_parameters[][2] = {
        { "SerialNumber", "file:/etc/lodevd/serial" },
        { "Manufacturer", "" },
        { "Name", "" },
        { "Model", "" },
};

static const struct {
        const char *name;
        int level;
} log_levels[] = {
        { "err", LOG_ERR },       { "error", LOG_ERR },   { "warning", LOG_WARNING },
        { "notice", LOG_NOTICE }, { "info", LOG_INFO },   { "debug", LOG_DEBUG },
};

static const char *const provision_method_table[_PROVISION_METHOD_MAX] = {
        [PROVISION_METHOD_CREATE] = "create",
        [PROVISION_METHOD_CSR] = "csr",
};

DEFINE_STRING_TABLE_LOOKUP(provision_method, ProvisionMethod);

static void parameters_free(ConfigParameter *p, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(p[i].name);
                free(p[i].value);
        }
        free(p);
}

void config_done(Config *c) {
        if (!c)
                return;
        free(c->path);
        free(c->endpoint);
        free(c->ca_file);
        free(c->alpn);
        free(c->claim_cert);
        free(c->claim_key);
        free(c->template_name);
        parameters_free(c->parameters, c->n_parameters);
        free(c->state_dir);
        free(c->http_proxy);
        free(c->installer);
        free(c->reboot_command);
        *c = (Config) {};
}

int config_init_defaults(Config *c) {
        Config d = {
                .port = 8883,
                .keepalive = 1200,
                .publish_rate = 100,
                .method = PROVISION_METHOD_CREATE,
                .spool_max_bytes = UINT64_C(64) * 1024 * 1024,
                .transfers_max_bytes = UINT64_C(256) * 1024 * 1024,
                .max_attempts = 3,
                .reboot_timeout = 600,
                .max_reboot_tries = 3,
                .max_download_bytes = UINT64_C(4) << 30,
                .install_timeout = 3600,
                .max_reboot_delay = 3600,
                .log_level = LOG_INFO,
        };

        d.endpoint = strdup("data.iot.us.lifeomic.com");
        d.ca_file = strdup(CONFIG_DEFAULT_CA_FILE);
        d.alpn = strdup("");
        d.claim_cert = strdup(LODEV_SYSCONFDIR "/lodevd/claim.pem");
        d.claim_key = strdup(LODEV_SYSCONFDIR "/lodevd/claim.key");
        d.template_name = strdup("DefaultProvisioningTemplate");
        d.state_dir = strdup(LODEV_STATE_DIR);
        d.http_proxy = strdup("");
        d.installer = strdup(LODEV_INSTALLER);
        d.reboot_command = strdup(LODEV_REBOOT_COMMAND);
        d.parameters = calloc(ELEMENTSOF(default_parameters), sizeof(ConfigParameter));
        if (d.parameters) {
                d.n_parameters = ELEMENTSOF(default_parameters);
                for (size_t i = 0; i < d.n_parameters; i++) {
                        d.parameters[i].name = strdup(default_parameters[i][0]);
                        d.parameters[i].value = strdup(default_parameters[i][1]);
                        if (!d.parameters[i].name || !d.parameters[i].value)
                                d.endpoint = (free(d.endpoint), NULL); /* flags the failure */
                }
        }
        if (!d.endpoint || !d.ca_file || !d.alpn || !d.claim_cert || !d.claim_key ||
            !d.template_name || !d.state_dir || !d.http_proxy || !d.installer ||
            !d.reboot_command || !d.parameters) {
                config_done(&d);
                return -ENOMEM;
        }
        *c = d;
        return 0;
}

static const char *setting_type_name(int type) {
        switch (type) {
        case CONFIG_TYPE_GROUP:
                return "a group";
        case CONFIG_TYPE_INT:
        case CONFIG_TYPE_INT64:
                return "an integer";
        case CONFIG_TYPE_FLOAT:
                return "a float";
        case CONFIG_TYPE_STRING:
                return "a string";
        case CONFIG_TYPE_BOOL:
                return "a boolean";
        case CONFIG_TYPE_ARRAY:
                return "an array";
        case CONFIG_TYPE_LIST:
                return "a list";
        default:
                return "of unknown type";
        }
}

/* Sets *ret_error to "FILE:LINE: KEY: MESSAGE" and returns -EINVAL. */
_printf_(5, 6) static int fail(char **ret_error, const char *file, int line, const char *key,
                               const char *fmt, ...) {
        _cleanup_free_ char *msg = NULL;
        va_list ap;

        va_start(ap, fmt);
        if (vasprintf(&msg, fmt, ap) < 0)
                msg = NULL;
        va_end(ap);
        if (ret_error) {
                free(*ret_error);
                if (line > 0)
                        *ret_error = strdup_printf("%s:%d: %s: %s", file, line, key, strempty(msg));
                else
                        *ret_error = strdup_printf("%s: %s: %s", file, key, strempty(msg));
        }
        return -EINVAL;
}

static const KeyDef *key_find(const char *group, const char *name) {
        for (size_t i = 0; i < ELEMENTSOF(keys); i++)
                if (streq_ptr(keys[i].group, group) && streq(keys[i].name, name))
                        return &keys[i];
        return NULL;
}

static int parse_parameters(config_setting_t *g, const char *file, Config *c, char **ret_error) {
        int n = config_setting_length(g);
        ConfigParameter *params;

        params = calloc(n > 0 ? (size_t) n : 1, sizeof(ConfigParameter));
        if (!params)
                return -ENOMEM;

        for (int i = 0; i < n; i++) {
                config_setting_t *s = config_setting_get_elem(g, i);
                const char *name = config_setting_name(s);
                int line = (int) config_setting_source_line(s);
                _cleanup_free_ char *key = strdup_printf("provisioning.parameters.%s", name);

                if (config_setting_type(s) != CONFIG_TYPE_STRING) {
                        parameters_free(params, (size_t) i);
                        return fail(ret_error, file, line, key ?: name,
                                    "expected a string, got %s",
                                    setting_type_name(config_setting_type(s)));
                }
                /* A value goes into the RegisterThing request as a JSON string: checked here
                 * like every other string, not refused by each provisioning later. */
                if (!utf8_is_valid(config_setting_get_string(s),
                                   strlen(config_setting_get_string(s)))) {
                        parameters_free(params, (size_t) i);
                        return fail(ret_error, file, line, key ?: name, "not valid UTF-8");
                }
                params[i].name = strdup(name);
                params[i].value = strdup(config_setting_get_string(s));
                params[i].line = line;
                if (!params[i].name || !params[i].value) {
                        parameters_free(params, (size_t) i + 1);
                        return -ENOMEM;
                }
        }
        parameters_free(c->parameters, c->n_parameters);
        c->parameters = params;
        c->n_parameters = (size_t) n;
        return 0;
}

static int parse_value(config_setting_t *s, const KeyDef *k, const char *file, Config *c,
                       char **ret_error) {
        int type = config_setting_type(s), line = (int) config_setting_source_line(s);
        _cleanup_free_ char *key = NULL;
        void *field = (uint8_t *) c + k->offset;

        key = k->group ? strdup_printf("%s.%s", k->group, k->name) : strdup(k->name);
        if (!key)
                return -ENOMEM;

        if (k->line_offset != NOLINE)
                *(int *) ((uint8_t *) c + k->line_offset) = line;

        switch (k->type) {
        case KEY_STRING:
        case KEY_METHOD:
        case KEY_LOG_LEVEL: {
                const char *v;

                if (type != CONFIG_TYPE_STRING)
                        return fail(ret_error, file, line, key, "expected a string, got %s",
                                    setting_type_name(type));
                v = config_setting_get_string(s);
                if (!utf8_is_valid(v, strlen(v)))
                        return fail(ret_error, file, line, key, "not valid UTF-8");
                if (k->type == KEY_METHOD) {
                        ProvisionMethod m = provision_method_from_string(v);
                        if (m < 0)
                                return fail(ret_error, file, line, key,
                                            "expected \"create\" or \"csr\", got \"%s\"", v);
                        *(ProvisionMethod *) field = m;
                } else if (k->type == KEY_LOG_LEVEL) {
                        size_t i;
                        for (i = 0; i < ELEMENTSOF(log_levels); i++)
                                if (streq(v, log_levels[i].name))
                                        break;
                        if (i >= ELEMENTSOF(log_levels))
                                return fail(ret_error, file, line, key,
                                            "expected one of err, warning, notice, info, "
                                            "debug, got \"%s\"",
                                            v);
                        *(int *) field = log_levels[i].level;
                } else {
                        if (free_and_strdup((char **) field, v) < 0)
                                return -ENOMEM;
                }
                return 0;
        }
        case KEY_UINT:
        case KEY_UINT64: {
                long long v;

                if (type != CONFIG_TYPE_INT && type != CONFIG_TYPE_INT64)
                        return fail(ret_error, file, line, key, "expected an integer, got %s",
                                    setting_type_name(type));
                v = config_setting_get_int64(s);
                if (v < 0 || (uint64_t) v < k->min || (uint64_t) v > k->max)
                        return fail(ret_error, file, line, key,
                                    "%lld is out of range %" PRIu64 "..%" PRIu64, v, k->min,
                                    k->max);
                if (k->type == KEY_UINT)
                        *(unsigned *) field = (unsigned) v;
                else
                        *(uint64_t *) field = (uint64_t) v;
                return 0;
        }
        case KEY_BOOL:
                if (type != CONFIG_TYPE_BOOL)
                        return fail(ret_error, file, line, key,
                                    "expected a boolean (true or false), got %s",
                                    setting_type_name(type));
                *(bool *) field = config_setting_get_bool(s);
                return 0;
        case KEY_GROUP:
        case KEY_PARAMETERS:
                if (type != CONFIG_TYPE_GROUP)
                        return fail(ret_error, file, line, key, "expected a group, got %s",
                                    setting_type_name(type));
                if (k->type == KEY_PARAMETERS)
                        return parse_parameters(s, file, c, ret_error);
                return 0;
        }
        return -EINVAL;
}

static int parse_group(config_setting_t *g, const char *group, const char *file, Config *c,
                       char **ret_error) {
        int n = config_setting_length(g), r;

        for (int i = 0; i < n; i++) {
                config_setting_t *s = config_setting_get_elem(g, i);
                const char *name = config_setting_name(s);
                const KeyDef *k = key_find(group, name);

                if (!k) {
                        _cleanup_free_ char *key = group ? strdup_printf("%s.%s", group, name)
                                                         : strdup(name);
                        return fail(ret_error, file, (int) config_setting_source_line(s),
                                    key ?: name, "unknown key");
                }
                r = parse_value(s, k, file, c, ret_error);
                if (r < 0)
                        return r;
                if (k->type == KEY_GROUP) {
                        r = parse_group(s, k->name, file, c, ret_error);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

static int check_values(Config *c, const char *file, char **ret_error) {
        if (isempty(c->endpoint))
                return fail(ret_error, file, c->line_endpoint, "platform.endpoint",
                            "must not be empty");
        if (isempty(c->ca_file))
                return fail(ret_error, file, c->line_ca_file, "platform.ca_file",
                            "must not be empty");
        if (isempty(c->state_dir) || c->state_dir[0] != '/')
                return fail(ret_error, file, c->line_state_dir, "state_dir",
                            "must be an absolute path");
        /* It becomes a level of the RegisterThing topics: caught here, not at the first
         * provisioning. libconfig strings may hold newlines and escapes of any byte. */
        if (!topic_name_component_valid(c->template_name))
                return fail(ret_error, file, c->line_template, "provisioning.template",
                            "must be a non-empty name of at most %u bytes of UTF-8 without '/', "
                            "'+', '#' or control characters",
                            TOPIC_COMPONENT_MAX);
        return 0;
}

int config_load(const char *path, Config *ret, char **ret_error) {
        _cleanup_(config_destroyp) config_t *cfg = NULL;
        config_t storage;
        Config c;
        int r;

        /* Fail on a missing file with errno intact, before libconfig turns it
         * into a generic "file I/O error". */
        if (access(path, R_OK) < 0) {
                r = -errno;
                if (ret_error) {
                        free(*ret_error);
                        *ret_error = strdup_printf("%s: %s", path, strerror(-r));
                }
                return r;
        }

        r = config_init_defaults(&c);
        if (r < 0)
                return r;

        config_init(&storage);
        cfg = &storage;
        if (!config_read_file(cfg, path)) {
                if (ret_error) {
                        free(*ret_error);
                        *ret_error = strdup_printf("%s:%d: syntax error: %s",
                                                   config_error_file(cfg) ?: path,
                                                   config_error_line(cfg),
                                                   config_error_text(cfg));
                }
                config_done(&c);
                return -EINVAL;
        }

        r = parse_group(config_root_setting(cfg), NULL, path, &c, ret_error);
        if (r >= 0)
                r = check_values(&c, path, ret_error);
        if (r >= 0 && !(c.path = strdup(path)))
                r = -ENOMEM;
        if (r < 0) {
                config_done(&c);
                return r;
        }
        *ret = c;
        return 0;
}

static int file_error(char **ret_error, const Config *c, int line, const char *key,
                      const char *path, const char *reason) {
        if (ret_error) {
                free(*ret_error);
                if (line > 0)
                        *ret_error = strdup_printf("%s:%d: %s: %s: %s", strempty(c->path), line,
                                                   key, path, reason);
                else
                        *ret_error = strdup_printf("%s: %s: %s: %s", strempty(c->path), key, path,
                                                   reason);
        }
        return -EINVAL;
}

int config_check_file(const Config *c, const char *key, const char *path, int line,
                      char **ret_error) {
        struct stat st;
        _cleanup_close_ int fd = -EBADF;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
                int r = -errno;
                file_error(ret_error, c, line, key, path, strerror(-r));
                return r;
        }
        if (fstat(fd, &st) < 0) {
                int r = -errno;
                file_error(ret_error, c, line, key, path, strerror(-r));
                return r;
        }
        if (!S_ISREG(st.st_mode))
                return file_error(ret_error, c, line, key, path, "not a regular file");
        return 0;
}

/* Whoever can write a file lodevd trusts can point it at another platform or another
 * account. Files that are missing are left to config_check_file(). */
static int check_not_writable(const Config *c, const char *key, const char *path, int line,
                              char **ret_error) {
        struct stat st;
        int r;

        if (stat(path, &st) < 0) {
                if (errno == ENOENT)
                        return 0;
                r = -errno;
                if (key)
                        file_error(ret_error, c, line, key, path, strerror(-r));
                else if (ret_error) {
                        free(*ret_error);
                        *ret_error = strdup_printf("%s: %s", path, strerror(-r));
                }
                return r;
        }
        if (!(st.st_mode & (S_IWGRP | S_IWOTH)))
                return 0;
        if (ret_error) {
                free(*ret_error);
                if (!key)
                        *ret_error = strdup_printf("%s " WRITABLE_ERROR, path);
                else if (line > 0)
                        *ret_error = strdup_printf("%s:%d: %s: %s " WRITABLE_ERROR,
                                                   strempty(c->path), line, key, path);
                else
                        *ret_error = strdup_printf("%s: %s: %s " WRITABLE_ERROR,
                                                   strempty(c->path), key, path);
        }
        return -EPERM;
}

int config_check_permissions(const Config *c, bool need_claim, char **ret_error) {
        int r;

        assert(c);

        if (c->path) {
                r = check_not_writable(c, NULL, c->path, 0, ret_error);
                if (r < 0)
                        return r;
        }
        r = check_not_writable(c, "platform.ca_file", c->ca_file, c->line_ca_file, ret_error);
        if (r < 0)
                return r;
        if (!need_claim)
                return 0;
        r = check_not_writable(c, "provisioning.claim_cert", c->claim_cert, c->line_claim_cert,
                               ret_error);
        if (r < 0)
                return r;
        return check_not_writable(c, "provisioning.claim_key", c->claim_key, c->line_claim_key,
                                  ret_error);
}

int config_parameter_resolve(const Config *c, const ConfigParameter *p, char **ret,
                             char **ret_error) {
        _cleanup_free_ char *key = strdup_printf("provisioning.parameters.%s", p->name);
        _cleanup_free_ char *buf = NULL;
        const char *path;
        size_t n;
        char *v;
        int r;

        if (!key)
                return -ENOMEM;
        if (strncmp(p->value, "file:", 5) != 0) {
                v = strdup(p->value);
                if (!v)
                        return -ENOMEM;
                *ret = v;
                return 0;
        }

        path = p->value + 5;
        r = read_file(path, PARAMETER_FILE_MAX, &buf, &n);
        if (r == -EFBIG)
                return file_error(ret_error, c, p->line, key, path, "longer than 4096 bytes");
        if (r == -EBADFD)
                return file_error(ret_error, c, p->line, key, path, "not a regular file");
        if (r < 0) {
                file_error(ret_error, c, p->line, key, path, strerror(-r));
                return r;
        }
        /* A device tree property such as /proc/device-tree/serial-number is a C string: its
         * one terminating NUL is not part of the value. */
        if (n > 0 && buf[n - 1] == '\0')
                n--;
        if (memchr(buf, '\0', n))
                return file_error(ret_error, c, p->line, key, path, "contains a NUL byte");
        strstrip(buf);
        if (!utf8_is_valid(buf, strlen(buf)))
                return file_error(ret_error, c, p->line, key, path, "not valid UTF-8");
        *ret = TAKE_PTR(buf);
        return 0;
}

int config_check_provisioning(const Config *c, char **ret_error) {
        int r;

        assert(c);

        r = config_check_file(c, "provisioning.claim_cert", c->claim_cert, c->line_claim_cert,
                              ret_error);
        if (r < 0)
                return r;
        r = config_check_file(c, "provisioning.claim_key", c->claim_key, c->line_claim_key,
                              ret_error);
        if (r < 0)
                return r;
        for (size_t i = 0; i < c->n_parameters; i++) {
                _cleanup_free_ char *v = NULL;

                r = config_parameter_resolve(c, &c->parameters[i], &v, ret_error);
                if (r < 0)
                        return r;
        }
        return 0;
}
