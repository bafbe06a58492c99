/* SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <syslog.h>

#include "conf.h"
#include "tests.h"
#include "util.h"

/* 129 bytes: one more than a topic level may hold. */
#define LONG_TEMPLATE                                                                              \
        "T01234567890123456789012345678901234567890123456789012345678901234567890" \
        "123456789012345678901234567890123456789012345678901234567"

static char dir[] = "/tmp/test-conf-XXXXXX";

static char *write_conf(const char *name, const char *text) {
        char *path = strdup_printf("%s/%s", dir, name);
        FILE *f = fopen(path, "we");

        fputs(text, f);
        fclose(f);
        return path;
}

/* Loads text and checks the error message is exactly "PATH:" + expected. */
static void check_error(const char *text, const char *expected) {
        _cleanup_free_ char *path = write_conf("bad.conf", text), *err = NULL, *want = NULL;
        Config c = {};
        int r;

        r = config_load(path, &c, &err);
        CHECK_INT(r, -EINVAL);
        want = strdup_printf("%s%s", path, expected);
        CHECK_STR(err, want);
}

static void test_defaults(void) {
        _cleanup_free_ char *path = write_conf("empty.conf", ""), *err = NULL;
        Config c;

        CHECK_INT(config_load(path, &c, &err), 0);
        CHECK_STR(c.endpoint, "data.iot.us.lifeomic.com");
        CHECK_INT(c.port, 8883);
        CHECK_STR(c.ca_file, "/etc/ssl/certs/Amazon_Root_CA_1.pem");
        CHECK_STR(c.alpn, "");
        CHECK_INT(c.keepalive, 1200);
        CHECK_INT(c.publish_rate, 100);
        CHECK_STR(c.template_name, "DefaultProvisioningTemplate");
        CHECK_INT(c.method, PROVISION_METHOD_CREATE);
        CHECK_INT(c.n_parameters, 4);
        CHECK_STR(c.parameters[0].name, "SerialNumber");
        CHECK_STR(c.parameters[0].value, "file:/etc/lodevd/serial");
        CHECK_STR(c.state_dir, "/var/lib/lodevd");
        CHECK_INT(c.spool_max_bytes, 67108864);
        CHECK(!c.allow_http);
        CHECK_INT(c.install_timeout, 3600);
        /* The request to lodevd-reboot.path, under the build's prefix. */
        CHECK(strlen(c.reboot_command) > 30 &&
              streq(c.reboot_command + strlen(c.reboot_command) - 30,
                    "/libexec/lodevd/request-reboot"));
        CHECK_INT(c.log_level, LOG_INFO);
        CHECK_STR(c.path, path);
        config_done(&c);
}

static void test_full(void) {
        _cleanup_free_ char *path = NULL, *err = NULL;
        Config c;

        path = write_conf("full.conf",
                          "platform = {\n"
                          "  endpoint = \"localhost\";\n"
                          "  port = 443;\n"
                          "  ca_file = \"/tmp/ca.pem\";\n"
                          "  alpn = \"x-amzn-mqtt-ca\";\n"
                          "  keepalive = 30;\n"
                          "  publish_rate = 0;\n"
                          "};\n"
                          "provisioning = {\n"
                          "  method = \"csr\";\n"
                          "  template = \"T1\";\n"
                          "  parameters = { SerialNumber = \"42\"; Extra = \"x\"; };\n"
                          "};\n"
                          "state_dir = \"/tmp/state\";\n"
                          "spool = { max_bytes = 5000000000L; };\n"
                          "http = { allow_http = true; proxy = \"http://p:3128\"; };\n"
                          "firmware = { install_timeout = 10; max_reboot_delay = 0; };\n"
                          "log_level = \"debug\";\n");
        CHECK_INT(config_load(path, &c, &err), 0);
        CHECK_STR(c.endpoint, "localhost");
        CHECK_INT(c.port, 443);
        CHECK_STR(c.alpn, "x-amzn-mqtt-ca");
        CHECK_INT(c.keepalive, 30);
        CHECK_INT(c.publish_rate, 0);
        CHECK_INT(c.method, PROVISION_METHOD_CSR);
        CHECK_STR(c.template_name, "T1");
        CHECK_INT(c.n_parameters, 2);
        CHECK_STR(c.parameters[1].name, "Extra");
        CHECK_INT(c.parameters[1].line, 12);
        CHECK_INT(c.line_ca_file, 4);
        CHECK_INT(c.spool_max_bytes, 5000000000LL);
        CHECK(c.allow_http);
        CHECK_STR(c.http_proxy, "http://p:3128");
        CHECK_INT(c.install_timeout, 10);
        CHECK_INT(c.max_reboot_delay, 0);
        CHECK_INT(c.log_level, LOG_DEBUG);
        config_done(&c);
}

static void test_errors(void) {
        _cleanup_free_ char *err = NULL;
        Config c = {};

        check_error("platform = {\n  endpont = \"x\";\n};\n", ":2: platform.endpont: unknown key");
        check_error("colour = 1;\n", ":1: colour: unknown key");
        check_error("platform = {\n port = \"8883\";\n};\n",
                    ":2: platform.port: expected an integer, got a string");
        check_error("\nplatform = { keepalive = 10; };\n",
                    ":2: platform.keepalive: 10 is out of range 30..1200");
        check_error("platform = { keepalive = 1201; };\n",
                    ":1: platform.keepalive: 1201 is out of range 30..1200");
        check_error("platform = { port = 0; };\n", ":1: platform.port: 0 is out of range 1..65535");
        check_error("http = { allow_http = 1; };\n",
                    ":1: http.allow_http: expected a boolean (true or false), got an integer");
        check_error("provisioning = { method = \"magic\"; };\n",
                    ":1: provisioning.method: expected \"create\" or \"csr\", got \"magic\"");
        check_error("provisioning = {\n parameters = { SerialNumber = 5; };\n};\n",
                    ":2: provisioning.parameters.SerialNumber: expected a string, got an integer");
        check_error("provisioning = {\n parameters = { Name = \"caf\\xe9\"; };\n};\n",
                    ":2: provisioning.parameters.Name: not valid UTF-8");
        check_error("platform = 5;\n", ":1: platform: expected a group, got an integer");
        check_error("log_level = \"loud\";\n",
                    ":1: log_level: expected one of err, warning, notice, info, debug, got "
                    "\"loud\"");
        check_error("state_dir = \"relative\";\n", ":1: state_dir: must be an absolute path");
        check_error("spool = { max_bytes = 10; };\n",
                    ":1: spool.max_bytes: 10 is out of range 65536..1099511627776");
        check_error("platform = { endpoint = \"\"; };\n",
                    ":1: platform.endpoint: must not be empty");
        check_error("\nprovisioning = {\n template = \"a/b\";\n};\n",
                    ":3: provisioning.template: must be a non-empty name of at most 128 bytes of "
                    "UTF-8 without '/', '+', '#' or control characters");
        /* libconfig takes a newline inside a string. */
        check_error("provisioning = {\n template = \"Default\nTemplate\";\n};\n",
                    ":2: provisioning.template: must be a non-empty name of at most 128 bytes of "
                    "UTF-8 without '/', '+', '#' or control characters");
        check_error("provisioning = { template = \"" LONG_TEMPLATE "\"; };\n",
                    ":1: provisioning.template: must be a non-empty name of at most 128 bytes of "
                    "UTF-8 without '/', '+', '#' or control characters");
        check_error("platform = {\n  port = ;\n};\n", ":2: syntax error: syntax error");

        /* A missing file keeps errno and names the path. */
        CHECK_INT(config_load("/nonexistent/lodevd.conf", &c, &err), -ENOENT);
        CHECK_STR(err, "/nonexistent/lodevd.conf: No such file or directory");
}

static void test_parameter_resolve(void) {
        _cleanup_free_ char *serial = write_conf("serial", "  SN-0042 \n"), *v = NULL,
                            *err = NULL, *conf = NULL, *want = NULL;
        Config c = {};
        ConfigParameter p = { .name = (char *) "SerialNumber", .line = 7 };

        conf = strdup_printf("%s/x.conf", dir);
        c.path = conf;
        p.value = strdup_printf("file:%s", serial);
        CHECK_INT(config_parameter_resolve(&c, &p, &v, &err), 0);
        CHECK_STR(v, "SN-0042");
        free(p.value);

        p.value = (char *) "file:/nonexistent/serial";
        CHECK_INT(config_parameter_resolve(&c, &p, &v, &err), -ENOENT);
        want = strdup_printf("%s:7: provisioning.parameters.SerialNumber: /nonexistent/serial: "
                             "No such file or directory",
                             conf);
        CHECK_STR(err, want);

        free(v);
        v = NULL;
        p.value = (char *) "literal";
        CHECK_INT(config_parameter_resolve(&c, &p, &v, &err), 0);
        CHECK_STR(v, "literal");
}

static char *write_bytes(const char *name, const char *data, size_t len) {
        char *path = strdup_printf("%s/%s", dir, name);
        FILE *f = fopen(path, "we");

        CHECK(f && fwrite(data, 1, len, f) == len);
        if (f)
                fclose(f);
        return path;
}

/* Files of the running system: pseudo-files whose size says 0, and device tree properties
 * (/proc/device-tree/serial-number), which end in the NUL of a C string. */
static void test_parameter_from_system_files(void) {
        _cleanup_free_ char *conf = strdup_printf("%s/x.conf", dir), *dt = NULL, *dt_nl = NULL,
                            *inner = NULL, *two = NULL, *err = NULL, *want = NULL;
        Config c = { .path = conf };
        ConfigParameter p = { .name = (char *) "SerialNumber", .line = 9 };
        char *v = NULL;

        dt = write_bytes("serial-number", "SN-DT-0042\0", 11);
        p.value = strdup_printf("file:%s", dt);
        CHECK_INT(config_parameter_resolve(&c, &p, &v, &err), 0);
        CHECK_STR(v, "SN-DT-0042");
        free(p.value);
        free(v);
        v = NULL;

        dt_nl = write_bytes("serial-nl", "SN-DT-7\n\0", 9);
        p.value = strdup_printf("file:%s", dt_nl);
        CHECK_INT(config_parameter_resolve(&c, &p, &v, &err), 0);
        CHECK_STR(v, "SN-DT-7");
        free(p.value);
        free(v);
        v = NULL;

        /* A NUL inside the value, or a second one at the end: not a serial number. */
        inner = write_bytes("serial-inner", "SN\0DT\0", 6);
        p.value = strdup_printf("file:%s", inner);
        CHECK_INT(config_parameter_resolve(&c, &p, &v, &err), -EINVAL);
        CHECK(!v);
        want = strdup_printf("%s:9: provisioning.parameters.SerialNumber: %s: contains a NUL "
                             "byte", conf, inner);
        CHECK_STR(err, want);
        free(p.value);
        free(want);
        two = write_bytes("serial-two", "SN\0\0", 4);
        p.value = strdup_printf("file:%s", two);
        CHECK_INT(config_parameter_resolve(&c, &p, &v, &err), -EINVAL);
        want = strdup_printf("%s:9: provisioning.parameters.SerialNumber: %s: contains a NUL "
                             "byte", conf, two);
        CHECK_STR(err, want);
        free(p.value);

        /* /proc says its files are empty; they are read to the end all the same. */
        p.value = (char *) "file:/proc/sys/kernel/random/boot_id";
        CHECK_INT(config_parameter_resolve(&c, &p, &v, &err), 0);
        CHECK(v && strlen(v) == 36 && v[8] == '-');
        free(v);
        v = NULL;
        p.value = (char *) "file:/proc/self/comm";
        CHECK_INT(config_parameter_resolve(&c, &p, &v, &err), 0);
        CHECK_STR(v, "test-conf");
        free(v);
        v = NULL;
        p.value = (char *) "file:/proc/self/smaps";
        CHECK_INT(config_parameter_resolve(&c, &p, &v, &err), -EINVAL);
        free(want);
        want = strdup_printf("%s:9: provisioning.parameters.SerialNumber: /proc/self/smaps: "
                             "longer than 4096 bytes", conf);
        CHECK_STR(err, want);
}

/* What provisioning needs, in order: the claim certificate, its key, the parameters' files. */
static void test_check_provisioning(void) {
        _cleanup_free_ char *conf = strdup_printf("%s/p.conf", dir), *cert = NULL, *key = NULL,
                            *serial = NULL, *err = NULL, *want = NULL;
        ConfigParameter params[2] = {
                { .name = (char *) "Manufacturer", .value = (char *) "Acme", .line = 12 },
                { .name = (char *) "SerialNumber", .line = 13 },
        };
        Config c = {
                .path = conf,
                .claim_cert = strdup_printf("%s/claim.pem", dir),
                .claim_key = strdup_printf("%s/claim.key", dir),
                .line_claim_cert = 10,
                .parameters = params,
                .n_parameters = 2,
        };

        serial = strdup_printf("%s/serial-p", dir);
        params[1].value = strdup_printf("file:%s", serial);

        CHECK_INT(config_check_provisioning(&c, &err), -ENOENT);
        want = strdup_printf("%s:10: provisioning.claim_cert: %s: No such file or directory",
                             conf, c.claim_cert);
        CHECK_STR(err, want);
        cert = write_conf("claim.pem", "cert\n");

        /* A key that is not in the file: no line. */
        CHECK_INT(config_check_provisioning(&c, &err), -ENOENT);
        free(want);
        want = strdup_printf("%s: provisioning.claim_key: %s: No such file or directory", conf,
                             c.claim_key);
        CHECK_STR(err, want);
        key = write_conf("claim.key", "key\n");

        CHECK_INT(config_check_provisioning(&c, &err), -ENOENT);
        free(want);
        want = strdup_printf("%s:13: provisioning.parameters.SerialNumber: %s: No such file or "
                             "directory", conf, serial);
        CHECK_STR(err, want);
        free(write_conf("serial-p", "SN-1\n"));

        free(err);
        err = NULL;
        CHECK_INT(config_check_provisioning(&c, &err), 0);
        CHECK(!err);

        free(params[1].value);
        free(c.claim_cert);
        free(c.claim_key);
}

static void test_check_file(void) {
        _cleanup_free_ char *err = NULL, *want = NULL;
        Config c = { .path = (char *) "/etc/lodevd/lodevd.conf" };

        CHECK_INT(config_check_file(&c, "platform.ca_file", "/nonexistent/ca.pem", 4, &err),
                  -ENOENT);
        CHECK_STR(err, "/etc/lodevd/lodevd.conf:4: platform.ca_file: /nonexistent/ca.pem: No "
                       "such file or directory");
        CHECK_INT(config_check_file(&c, "platform.ca_file", "/tmp", 4, &err), -EINVAL);
        CHECK_STR(err, "/etc/lodevd/lodevd.conf:4: platform.ca_file: /tmp: not a regular file");
        CHECK_INT(config_check_file(&c, "platform.ca_file", "/etc/hostname", 0, &err), 0);
        (void) want;
}

static void test_check_permissions(void) {
        _cleanup_free_ char *conf = write_conf("perm.conf", ""), *ca = write_conf("ca.pem", "x"),
                            *cert = write_conf("claim.pem", "x"), *key = write_conf("claim.key", "x"),
                            *link = strdup_printf("%s/ca-link.pem", dir), *err = NULL, *want = NULL;
        Config c = {
                .path = conf,
                .ca_file = ca,
                .claim_cert = cert,
                .claim_key = key,
                .line_ca_file = 4,
                .line_claim_cert = 9,
        };

        CHECK_INT(chmod(conf, 0644), 0);
        CHECK_INT(chmod(ca, 0644), 0);
        CHECK_INT(chmod(cert, 0644), 0);
        CHECK_INT(chmod(key, 0600), 0);
        CHECK_INT(config_check_permissions(&c, true, &err), 0);
        CHECK(err == NULL);

        /* The configuration file itself. */
        CHECK_INT(chmod(conf, 0664), 0);
        CHECK_INT(config_check_permissions(&c, false, &err), -EPERM);
        want = strdup_printf("%s is writable by group or others; refusing to start (chmod go-w "
                             "it)", conf);
        CHECK_STR(err, want);
        CHECK_INT(chmod(conf, 0646), 0);
        CHECK_INT(config_check_permissions(&c, false, &err), -EPERM);
        CHECK_INT(chmod(conf, 0644), 0);

        /* The CA file, through a symlink (whose own mode is 0777 and does not count). */
        CHECK_INT(symlink(ca, link), 0);
        c.ca_file = link;
        CHECK_INT(config_check_permissions(&c, false, &err), 0);
        CHECK_INT(chmod(ca, 0666), 0);
        CHECK_INT(config_check_permissions(&c, false, &err), -EPERM);
        free(want);
        want = strdup_printf("%s:4: platform.ca_file: %s is writable by group or others; "
                             "refusing to start (chmod go-w it)", conf, link);
        CHECK_STR(err, want);
        CHECK_INT(chmod(ca, 0644), 0);

        /* The claim files, only when they are needed; a key left at its default has no line. */
        CHECK_INT(chmod(cert, 0664), 0);
        CHECK_INT(config_check_permissions(&c, false, &err), 0);
        CHECK_INT(config_check_permissions(&c, true, &err), -EPERM);
        free(want);
        want = strdup_printf("%s:9: provisioning.claim_cert: %s is writable by group or others; "
                             "refusing to start (chmod go-w it)", conf, cert);
        CHECK_STR(err, want);
        CHECK_INT(chmod(cert, 0644), 0);
        CHECK_INT(chmod(key, 0620), 0);
        CHECK_INT(config_check_permissions(&c, true, &err), -EPERM);
        free(want);
        want = strdup_printf("%s: provisioning.claim_key: %s is writable by group or others; "
                             "refusing to start (chmod go-w it)", conf, key);
        CHECK_STR(err, want);
        CHECK_INT(chmod(key, 0600), 0);

        /* Missing files are config_check_file()'s to report. */
        c.claim_cert = (char *) "/nonexistent/claim.pem";
        CHECK_INT(config_check_permissions(&c, true, &err), 0);
}

int main(void) {
        if (!mkdtemp(dir))
                return 77;
        test_defaults();
        test_full();
        test_errors();
        test_parameter_resolve();
        test_parameter_from_system_files();
        test_check_provisioning();
        test_check_file();
        test_check_permissions();
        {
                _cleanup_free_ char *cmd = strdup_printf("rm -rf '%s'", dir);
                (void) system(cmd);
        }
        return TESTS_DONE();
}
