/* SPDX-License-Identifier: MIT */
/*
 * lodev_broker.c — mosquitto 2.0 plugin that gives the emulator's broker the
 * behaviour of AWS IoT Core that plain mosquitto lacks:
 *
 *  - policies shaped like the platform's: the claim identity may only use the
 *    fleet-provisioning topics; a device identity (its certificate must have
 *    been registered to a thing) may only use the rules topics, its own
 *    <thing> topics and $aws/things/<thing>/..., and only with client id ==
 *    thing name;
 *  - requests to the platform ($aws/certificates/..., $aws/provisioning-
 *    templates/..., $aws/rules/..., $aws/things/<t>/jobs/...) are handed to
 *    the emulator's service alone, tagged with the sender's client id and
 *    identity: the topic becomes $lodev/in/<hex client id>/<hex identity>/<topic>;
 *  - answers the service publishes to $lodev/to/<hex client id>/<topic> reach
 *    only that client (and only if it subscribed), as AWS answers provisioning
 *    requests to the asking connection alone;
 *  - per-client publish throttling (AWS: 100 publishes/s per connection) and
 *    a log of every client publish so tests can measure a client's pacing;
 *  - control messages from the service on $lodev/ctl/...: "kick" (drop a
 *    client), "throttle" (set the rate, 0 = off).
 *
 * The identity of a connection is its certificate's CN (mosquitto's
 * use_identity_as_username). Issued device certificates carry the
 * certificate id as CN; the file named by plugin_opt_identities maps
 * certificate ids to thing names and is re-read when it changes.
 */
#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define IN_PREFIX "$lodev/in/"
#define TO_PREFIX "$lodev/to/"
#define CTL_PREFIX "$lodev/ctl/"
#define MAX_RATE 10000

struct ident {
	char *cert_id;
	char *thing;
};

/* Publish timestamps of one client: a ring of the last `rate` accepted ones. */
struct rate {
	char *client_id;
	double *stamps;
	int count;
	int head;
	struct rate *next;
};

struct kick {
	char *client_id;
	struct kick *next;
};

static mosquitto_plugin_id_t *plugin_id;
static char *service_identity;
static char *claim_identity;
static char *identities_path;
static char *rules_csv;
static FILE *publish_log;
static int throttle_rate = 100;

static struct ident *idents;
static size_t n_idents;
static struct stat idents_stat;

static struct rate *rates;
static struct kick *kicks;

/* Set while a directed answer is being routed (see on_message). */
static char *direct_target;
static char *direct_topic;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static bool starts_with(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

static bool str_eq(const char *a, const char *b)
{
	return a && b && strcmp(a, b) == 0;
}

static char *hex_encode(const char *s)
{
	static const char digits[] = "0123456789abcdef";
	size_t n = strlen(s);
	char *out = mosquitto_malloc(2 * n + 1);
	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[(unsigned char)s[i] >> 4];
		out[2 * i + 1] = digits[(unsigned char)s[i] & 0xf];
	}
	out[2 * n] = '\0';
	return out;
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Decodes `len` hex digits; NULL when they are not valid lower-case hex. */
static char *hex_decode(const char *s, size_t len)
{
	if (len % 2 != 0)
		return NULL;
	char *out = mosquitto_malloc(len / 2 + 1);
	if (!out)
		return NULL;
	for (size_t i = 0; i < len / 2; i++) {
		int hi = hex_value(s[2 * i]), lo = hex_value(s[2 * i + 1]);
		if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
			mosquitto_free(out);
			return NULL;
		}
		out[i] = (char)(hi << 4 | lo);
	}
	out[len / 2] = '\0';
	return out;
}

static void idents_free(void)
{
	for (size_t i = 0; i < n_idents; i++) {
		free(idents[i].cert_id);
		free(idents[i].thing);
	}
	free(idents);
	idents = NULL;
	n_idents = 0;
}

/* Re-reads the identities file when its inode, size or mtime changed (the
 * emulator replaces it with rename(), so a change always shows). */
static void idents_refresh(void)
{
	struct stat st;
	if (!identities_path || stat(identities_path, &st) < 0) {
		idents_free();
		memset(&idents_stat, 0, sizeof(idents_stat));
		return;
	}
	if (st.st_ino == idents_stat.st_ino && st.st_size == idents_stat.st_size &&
	    st.st_mtim.tv_sec == idents_stat.st_mtim.tv_sec &&
	    st.st_mtim.tv_nsec == idents_stat.st_mtim.tv_nsec && idents)
		return;

	FILE *f = fopen(identities_path, "re");
	if (!f) {
		mosquitto_log_printf(MOSQ_LOG_WARNING, "lodev: cannot read %s: %s",
				     identities_path, strerror(errno));
		return;
	}
	idents_free();
	char line[1024];
	size_t cap = 0;
	while (fgets(line, sizeof(line), f)) {
		char *cert = strtok(line, " \t\r\n");
		char *thing = strtok(NULL, " \t\r\n");
		if (!cert || !thing)
			continue;
		if (n_idents == cap) {
			cap = cap ? 2 * cap : 16;
			struct ident *grown = realloc(idents, cap * sizeof(*idents));
			if (!grown)
				break;
			idents = grown;
		}
		idents[n_idents].cert_id = strdup(cert);
		idents[n_idents].thing = strdup(thing);
		n_idents++;
	}
	fclose(f);
	idents_stat = st;
}

static const char *thing_of_identity(const char *identity)
{
	idents_refresh();
	for (size_t i = 0; i < n_idents; i++)
		if (str_eq(idents[i].cert_id, identity))
			return idents[i].thing;
	return NULL;
}

/* Kicking the client whose packet is being handled is not safe from inside
 * its own ACL check, so kicks wait for the next tick. */
static void queue_kick(const char *client_id)
{
	for (struct kick *k = kicks; k; k = k->next)
		if (str_eq(k->client_id, client_id))
			return;
	struct kick *k = calloc(1, sizeof(*k));
	if (!k)
		return;
	k->client_id = strdup(client_id);
	k->next = kicks;
	kicks = k;
}

static void run_kicks(void)
{
	while (kicks) {
		struct kick *k = kicks;
		kicks = k->next;
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "lodev: dropping client %s", k->client_id);
		mosquitto_kick_client_by_clientid(k->client_id, false);
		free(k->client_id);
		free(k);
	}
}

static void rate_forget(const char *client_id)
{
	for (struct rate **p = &rates; *p; p = &(*p)->next) {
		if (str_eq((*p)->client_id, client_id)) {
			struct rate *r = *p;
			*p = r->next;
			free(r->client_id);
			free(r->stamps);
			free(r);
			return;
		}
	}
}

static void rates_free(void)
{
	while (rates)
		rate_forget(rates->client_id);
}

/* True when this publish fits in the client's budget of throttle_rate
 * publishes in any one-second window; records it if so. */
static bool rate_admit(const char *client_id, double t)
{
	if (throttle_rate <= 0)
		return true;
	struct rate *r;
	for (r = rates; r; r = r->next)
		if (str_eq(r->client_id, client_id))
			break;
	if (!r) {
		r = calloc(1, sizeof(*r));
		if (!r)
			return true;
		r->client_id = strdup(client_id);
		r->stamps = calloc((size_t)throttle_rate, sizeof(double));
		if (!r->stamps) {
			free(r->client_id);
			free(r);
			return true;
		}
		r->next = rates;
		rates = r;
	}
	if (r->count < throttle_rate) {
		r->stamps[(r->head + r->count) % throttle_rate] = t;
		r->count++;
		return true;
	}
	if (t - r->stamps[r->head] >= 1.0) {
		r->stamps[r->head] = t;
		r->head = (r->head + 1) % throttle_rate;
		return true;
	}
	return false;
}

static void log_publish(double t, const char *client_id, const char *topic, const char *verdict)
{
	if (!publish_log)
		return;
	char *cid = hex_encode(client_id);
	char *top = hex_encode(topic);
	if (cid && top) {
		fprintf(publish_log, "%.6f %s %s %s\n", t, cid, verdict, top);
		fflush(publish_log);
	}
	mosquitto_free(cid);
	mosquitto_free(top);
}

static bool is_rule_topic(const char *topic)
{
	if (!starts_with(topic, "$aws/rules/"))
		return false;
	const char *name = topic + strlen("$aws/rules/");
	size_t len = strcspn(name, "/");
	const char *r = rules_csv;
	while (r && *r) {
		size_t rlen = strcspn(r, ",");
		if (rlen == len && strncmp(r, name, len) == 0)
			return true;
		r += rlen;
		if (*r == ',')
			r++;
	}
	return false;
}

/* `topic` is exactly `base` or below it. */
static bool within(const char *topic, const char *base)
{
	size_t n = strlen(base);
	return strncmp(topic, base, n) == 0 && (topic[n] == '\0' || topic[n] == '/');
}

static bool within_things(const char *topic, const char *thing)
{
	static const char pfx[] = "$aws/things/";
	size_t n = strlen(thing);
	return starts_with(topic, pfx) && strncmp(topic + strlen(pfx), thing, n) == 0 &&
	       topic[strlen(pfx) + n] == '/';
}

/* $aws/provisioning-templates/<one level>/provision/<rest> */
static bool is_template_topic(const char *topic, const char *rest)
{
	static const char pfx[] = "$aws/provisioning-templates/";
	if (!starts_with(topic, pfx))
		return false;
	const char *tpl = topic + strlen(pfx);
	size_t len = strcspn(tpl, "/");
	if (len == 0 || strcspn(tpl, "+#") < len)
		return false;
	const char *tail = tpl + len;
	if (!starts_with(tail, "/provision/"))
		return false;
	tail += strlen("/provision/");
	return rest ? strcmp(tail, rest) == 0 : true;
}

static bool claim_allows(const char *topic, int access)
{
	if (access == MOSQ_ACL_WRITE)
		return strcmp(topic, "$aws/certificates/create/json") == 0 ||
		       strcmp(topic, "$aws/certificates/create-from-csr/json") == 0 ||
		       is_template_topic(topic, "json");
	return starts_with(topic, "$aws/certificates/create/") ||
	       starts_with(topic, "$aws/certificates/create-from-csr/") ||
	       is_template_topic(topic, NULL);
}

static bool device_allows(const char *thing, const char *topic, int access)
{
	if (within(topic, thing) || within_things(topic, thing))
		return true;
	return access == MOSQ_ACL_WRITE && is_rule_topic(topic);
}

static bool is_request_topic(const char *topic)
{
	return starts_with(topic, "$aws/certificates/") ||
	       starts_with(topic, "$aws/provisioning-templates/") ||
	       starts_with(topic, "$aws/rules/") ||
	       (starts_with(topic, "$aws/things/") && strstr(topic, "/jobs/"));
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *cid = mosquitto_client_id(ed->client);
	const char *identity = mosquitto_client_username(ed->client);
	(void)event;
	(void)userdata;

	if (str_eq(identity, service_identity))
		return MOSQ_ERR_SUCCESS;
	if (ed->access == MOSQ_ACL_UNSUBSCRIBE)
		return MOSQ_ERR_SUCCESS;
	if (!identity || !cid)
		return MOSQ_ERR_ACL_DENIED;

	if (ed->access == MOSQ_ACL_READ && direct_topic && str_eq(ed->topic, direct_topic) &&
	    !str_eq(cid, direct_target))
		return MOSQ_ERR_ACL_DENIED;

	if (str_eq(identity, claim_identity))
		return claim_allows(ed->topic, ed->access) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;

	const char *thing = thing_of_identity(identity);
	if (!thing || strcmp(thing, cid) != 0) {
		/* AWS refuses such a CONNECT; mosquitto has no hook there when the
		 * identity comes from the certificate, so drop it at first use. */
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				     "lodev: client %s (certificate %s) is not the thing its certificate "
				     "belongs to (%s)", cid, identity, thing ? thing : "none");
		queue_kick(cid);
		return MOSQ_ERR_ACL_DENIED;
	}
	return device_allows(thing, ed->topic, ed->access) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
}

static void direct_clear(void)
{
	mosquitto_free(direct_target);
	mosquitto_free(direct_topic);
	direct_target = NULL;
	direct_topic = NULL;
}

static void handle_control(const char *what, const struct mosquitto_evt_message *ed)
{
	char arg[512];
	size_t n = ed->payloadlen < sizeof(arg) - 1 ? ed->payloadlen : sizeof(arg) - 1;
	memcpy(arg, ed->payload, n);
	arg[n] = '\0';

	if (strcmp(what, "kick") == 0) {
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "lodev: dropping client %s on request", arg);
		mosquitto_kick_client_by_clientid(arg, false);
	} else if (strcmp(what, "throttle") == 0) {
		int rate = atoi(arg);
		if (rate < 0 || rate > MAX_RATE)
			return;
		if (rate != throttle_rate)
			rates_free();
		throttle_rate = rate;
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "lodev: publish throttle %d/s", rate);
	}
}

/* Replaces the message topic; mosquitto 2.0 takes the new string as is and
 * expects the plugin to free the old one. */
static int set_topic(struct mosquitto_evt_message *ed, char *topic)
{
	if (!topic)
		return MOSQ_ERR_NOMEM;
	mosquitto_free(ed->topic);
	ed->topic = topic;
	ed->retain = false;
	return MOSQ_ERR_SUCCESS;
}

static int on_service_message(struct mosquitto_evt_message *ed)
{
	if (starts_with(ed->topic, CTL_PREFIX)) {
		handle_control(ed->topic + strlen(CTL_PREFIX), ed);
		return MOSQ_ERR_ACL_DENIED; /* consumed */
	}
	if (!starts_with(ed->topic, TO_PREFIX))
		return MOSQ_ERR_SUCCESS;

	const char *hex = ed->topic + strlen(TO_PREFIX);
	const char *slash = strchr(hex, '/');
	if (!slash || !slash[1])
		return MOSQ_ERR_ACL_DENIED;
	char *target = hex_decode(hex, (size_t)(slash - hex));
	char *topic = mosquitto_strdup(slash + 1);
	if (!target || !topic) {
		mosquitto_free(target);
		mosquitto_free(topic);
		return MOSQ_ERR_ACL_DENIED;
	}
	/* The broker checks read access for each subscriber while this very
	 * publish is being queued, right after this callback returns; the
	 * check above lets only the target through. */
	direct_target = target;
	direct_topic = mosquitto_strdup(topic);
	return set_topic(ed, topic);
}

static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	const char *cid = mosquitto_client_id(ed->client);
	const char *identity = mosquitto_client_username(ed->client);
	(void)event;
	(void)userdata;

	direct_clear();
	if (!cid || !ed->topic)
		return MOSQ_ERR_SUCCESS;
	if (str_eq(identity, service_identity))
		return on_service_message(ed);

	double t = now_s();
	if (!rate_admit(cid, t)) {
		log_publish(t, cid, ed->topic, "throttled");
		return MOSQ_ERR_ACL_DENIED;
	}
	log_publish(t, cid, ed->topic, "ok");

	if (!is_request_topic(ed->topic))
		return MOSQ_ERR_SUCCESS;

	char *hcid = hex_encode(cid);
	char *hid = hex_encode(identity ? identity : "");
	size_t len = strlen(IN_PREFIX) + (hcid ? strlen(hcid) : 0) + (hid ? strlen(hid) : 0) +
		     strlen(ed->topic) + 3;
	char *topic = (hcid && hid) ? mosquitto_malloc(len) : NULL;
	if (topic)
		snprintf(topic, len, "%s%s/%s/%s", IN_PREFIX, hcid, hid, ed->topic);
	mosquitto_free(hcid);
	mosquitto_free(hid);
	return set_topic(ed, topic);
}

static int on_tick(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	direct_clear();
	run_kicks();
	return MOSQ_ERR_SUCCESS;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	const char *cid = mosquitto_client_id(ed->client);
	(void)event;
	(void)userdata;
	if (cid)
		rate_forget(cid);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for (int i = 0; i < supported_version_count; i++)
		if (supported_versions[i] == 5)
			return 5;
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
			  struct mosquitto_opt *options, int option_count)
{
	const char *log_path = NULL;
	(void)userdata;
	plugin_id = identifier;

	for (int i = 0; i < option_count; i++) {
		const char *k = options[i].key, *v = options[i].value;
		if (strcmp(k, "service_identity") == 0)
			service_identity = strdup(v);
		else if (strcmp(k, "claim_identity") == 0)
			claim_identity = strdup(v);
		else if (strcmp(k, "identities") == 0)
			identities_path = strdup(v);
		else if (strcmp(k, "rules") == 0)
			rules_csv = strdup(v);
		else if (strcmp(k, "publish_log") == 0)
			log_path = v;
		else if (strcmp(k, "throttle") == 0)
			throttle_rate = atoi(v);
	}
	if (!service_identity || !claim_identity || !identities_path || !rules_csv ||
	    throttle_rate < 0 || throttle_rate > MAX_RATE) {
		mosquitto_log_printf(MOSQ_LOG_ERR,
				     "lodev: plugin_opt_service_identity, _claim_identity, _identities "
				     "and _rules are required; _throttle is 0..%d", MAX_RATE);
		return MOSQ_ERR_INVAL;
	}
	if (log_path) {
		publish_log = fopen(log_path, "ae");
		if (!publish_log) {
			mosquitto_log_printf(MOSQ_LOG_ERR, "lodev: cannot open %s: %s", log_path,
					     strerror(errno));
			return MOSQ_ERR_UNKNOWN;
		}
	}

	int rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	if (rc == MOSQ_ERR_SUCCESS)
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL);
	if (rc == MOSQ_ERR_SUCCESS)
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, on_tick, NULL, NULL);
	if (rc == MOSQ_ERR_SUCCESS)
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, NULL);
	return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, on_tick, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	direct_clear();
	idents_free();
	rates_free();
	while (kicks) {
		struct kick *k = kicks;
		kicks = k->next;
		free(k->client_id);
		free(k);
	}
	if (publish_log)
		fclose(publish_log);
	publish_log = NULL;
	free(service_identity);
	free(claim_identity);
	free(identities_path);
	free(rules_csv);
	service_identity = claim_identity = identities_path = rules_csv = NULL;
	return MOSQ_ERR_SUCCESS;
}
