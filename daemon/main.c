/* SPDX-License-Identifier: MIT */
#include <getopt.h>
#include <signal.h>
#include <sys/stat.h>

#include "bus.h"
#include "config.h"
#include "fileio.h"
#include "identity.h"
#include "mqtt.h"
#include "log.h"
#include "manager.h"
#include "util.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(Manager *, manager_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(Bus *, bus_free);

static void help(void) {
        printf("Usage: lodevd [OPTIONS]\n\n"
               "Device agent for the LifeOmic Platform.\n\n"
               "  -c --config FILE   configuration file (default %s)\n"
               "  -v --verbose       log debug messages\n"
               "  -h --help          show this help\n"
               "     --version       show the version\n",
               LODEV_CONFIG_FILE);
}

/* Checks what must hold before anything is written: the state directory is
 * private to lodevd, stored keys are not readable by others, the CA bundle
 * exists, and no one but its owner can write the config file, the CA bundle
 * or the claim certificate and key (those that exist). Each failure names the path. */
static int check_files(const Config *c) {
        _cleanup_free_ char *err = NULL, *key = NULL;
        int r;

        r = mkdir_private(c->state_dir);
        if (r == -EPERM)
                return log_error_errno(r, "State directory %s is accessible by group or others "
                                          "or not owned by this user; refusing to start "
                                          "(chmod 0700 it).", c->state_dir);
        if (r < 0)
                return log_error_errno(r, "Failed to create state directory %s: %m",
                                       c->state_dir);

        key = identity_key_path(c->state_dir);
        if (!key)
                return log_oom();
        r = check_private_file(key);
        if (r == -EPERM)
                return log_error_errno(r, "Key file %s is accessible by group or others; "
                                          "refusing to start (chmod 0600 it).", key);

        r = check_private_file(c->claim_key);
        if (r == -EPERM)
                return log_error_errno(r, "%s:%d: provisioning.claim_key: %s is accessible by "
                                          "group or others; refusing to start (chmod 0600 it).",
                                       c->path, c->line_claim_key, c->claim_key);

        r = config_check_file(c, "platform.ca_file", c->ca_file, c->line_ca_file, &err);
        if (r < 0)
                return log_error_errno(r, "%s", err);

        /* Claim files too when provisioned: a forced re-provisioning uses them. */
        r = config_check_permissions(c, true, &err);
        if (r < 0)
                return log_error_errno(r, "%s", err);

        /* Missing claim files are not a start-up error: a fresh install waits for them in
         * State "unprovisioned" (manager.c), rather than failing again at every restart. */
        return 0;
}

int main(int argc, char *argv[]) {
        enum { ARG_VERSION = 0x100 };
        static const struct option options[] = {
                { "config", required_argument, NULL, 'c' },
                { "verbose", no_argument, NULL, 'v' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                {},
        };
        /* Freed in reverse order: the manager's services answer what is pending while the
         * bus is still there. */
        _cleanup_(bus_freep) Bus *bus = NULL;
        _cleanup_(manager_freep) Manager *m = NULL;
        _cleanup_free_ char *err = NULL;
        const char *config_path = LODEV_CONFIG_FILE;
        bool verbose = false;
        Config config;
        int c, r;

        while ((c = getopt_long(argc, argv, "c:vh", options, NULL)) >= 0) {
                switch (c) {
                case 'c':
                        config_path = optarg;
                        break;
                case 'v':
                        verbose = true;
                        break;
                case 'h':
                        help();
                        return EXIT_SUCCESS;
                case ARG_VERSION:
                        printf("lodevd %s\n", LODEV_VERSION);
                        return EXIT_SUCCESS;
                default:
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "lodevd: unexpected argument '%s'\n", argv[optind]);
                return 2;
        }

        log_setup(verbose ? LOG_DEBUG : LOG_INFO, false);
        umask(0077);
        /* The default soft limit of 1024 is within reach of a flood of calls; running out
         * would break spool writes and reconnects. The bus bounds what callers may hold. */
        r = rlimit_nofile_raise();
        if (r < 0)
                log_warning_errno(r, "Failed to raise RLIMIT_NOFILE, ignoring: %m");
        /* OpenSSL writes to the MQTT socket with write(): a peer that went
         * away must be an error to handle, not a signal that kills us. */
        signal(SIGPIPE, SIG_IGN);

        r = config_load(config_path, &config, &err);
        if (r < 0) {
                log_error_errno(r, "%s", err ?: strerror(-r));
                return EXIT_FAILURE;
        }
        if (!verbose)
                log_set_max_level(config.log_level);

        r = check_files(&config);
        if (r < 0) {
                config_done(&config);
                return EXIT_FAILURE;
        }

        r = mqtt_global_init();
        if (r < 0) {
                config_done(&config);
                log_error_errno(r, "Failed to initialize libmosquitto: %m");
                return EXIT_FAILURE;
        }

        r = manager_new(config_path, &config, &m);
        if (r < 0) {
                config_done(&config);
                log_error_errno(r, "Failed to set up: %m");
                return EXIT_FAILURE;
        }

        m->verbose = verbose;
        /* The spool before the bus: a call that is accepted has a place to go. */
        r = manager_open(m);
        if (r < 0)
                return EXIT_FAILURE;
        r = bus_new(m, &bus);
        if (r < 0)
                return EXIT_FAILURE;
        r = manager_start(m);
        if (r < 0)
                return EXIT_FAILURE;

        r = manager_run(m);
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
