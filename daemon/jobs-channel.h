/* SPDX-License-Identifier: MIT */
#pragma once

/* The jobs service's side of the device connection: requests to the Jobs API (the list,
 * one job) and status updates, on a control channel. An answer carries no token that names
 * its request, so one request and one update wait for an answer at a time: an answer on
 * <job>/update/accepted or /rejected belongs to the update of that job that waits, and one for
 * any other update is not taken for it. A newer update replaces one not yet sent (the last word
 * counts; a progress report never replaces a status change); the same update already on its
 * way is not queued again. Whatever gets no answer within JOBS_CHANNEL_ANSWER_TIMEOUT_USEC is
 * sent again, an update once more after a reconnect. Knows nothing of what the messages
 * mean. */

#include <stdbool.h>
#include <systemd/sd-event.h>

#include "connection.h"

#define JOBS_CHANNEL_ANSWER_TIMEOUT_USEC (UINT64_C(30) * 1000000)

typedef struct JobsChannel JobsChannel;

typedef struct JobsChannelCallbacks {
        /* The connection came up (after the subscriptions) or went down. */
        void (*online)(void *userdata);
        void (*offline)(void *userdata);
        /* The list request got no answer in time; it is sent again. */
        void (*list_timeout)(void *userdata);
} JobsChannelCallbacks;

int jobs_channel_new(sd_event *event, const JobsChannelCallbacks *cb, void *userdata,
                     JobsChannel **ret);
JobsChannel *jobs_channel_free(JobsChannel *c);

/* Adds the channel to conn; thing names the topics. */
int jobs_channel_attach(JobsChannel *c, Connection *conn, const char *thing);
/* Before the connection goes away: requests are dropped (the next connect asks again), an
 * update waiting for its answer is sent again on the next connection. */
void jobs_channel_detach(JobsChannel *c);
bool jobs_channel_attached(const JobsChannel *c);

/* $aws/things/<thing>/jobs/get, unless one is on its way. */
void jobs_channel_request_list(JobsChannel *c);
/* <job_id>/get with the document, unless the same is queued. */
void jobs_channel_request_job(JobsChannel *c, const char *job_id);
/* An answer (or refusal) to the request waiting arrived: list or a job's. */
void jobs_channel_request_answered(JobsChannel *c, bool list);
void jobs_channel_requests_answered(JobsChannel *c);

/* <job_id>/update with payload (an encoded report). -ENOMEM, -EINVAL. */
int jobs_channel_update(JobsChannel *c, const char *job_id, const char *payload, bool progress);
/* An answer on <job_id>/update/...: true (with *ret_progress) when it is the one the update of
 * that job waited for, which is then done; false when nothing waited for it. */
bool jobs_channel_update_answered(JobsChannel *c, const char *job_id, bool *ret_progress);
