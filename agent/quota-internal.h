/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 8 of 12, decisions: calls layers 6, 9, 12. */

/* Shared between quota.c (windows, reservations) and quota-store.c (the
 * snapshot file); nothing outside agent/quota*.c includes this. */

#include "quota.h"
#include "util.h"

#define QUOTA_SEC USEC_PER_SEC
#define QUOTA_MINUTE (60U * QUOTA_SEC)
#define QUOTA_DAY (UINT64_C(86400) * QUOTA_SEC)
/* 60 one-second buckets plus one: usage is put in bucket ceil(t), and the
 * window at an instant that is not a whole second spans 61 bucket keys. */
#define QUOTA_BUCKETS 61U
#define QUOTA_NONE UINT64_MAX   /* empty bucket key, no day/month yet */
/* Times are clamped to the end of year 9999 (day 2932896 since the epoch),
 * so that no arithmetic on days, months or bucket keys can overflow. */
#define QUOTA_MAX_DAY UINT64_C(2932896)
#define QUOTA_MAX_MONTH (UINT64_C(10000) * 12)
#define QUOTA_MAX_TIME (QUOTA_MAX_DAY * QUOTA_DAY)

struct quota_bucket {
        uint64_t k;             /* ceil(t / 1 s) of the usage it holds; QUOTA_NONE when empty */
        uint64_t requests;      /* admitted requests, in flight ones included */
        uint64_t tokens;        /* settled tokens */
        uint64_t in_flight;     /* of requests, those whose reservation is still open */
};

/* One team's counters. Refcounted: the kb_quota holds one reference while the
 * team is configured, each open reservation holds one. */
struct quota_team {
        unsigned n_ref;
        char *name;

        /* limits, 0 = none; budgets in micro-USD */
        uint64_t limits[_KB_QUOTA_LIMIT_MAX];
        bool fleet;             /* counted fleet-wide in the quota store (quota_scope = fleet) */
        uint32_t share_ppm;     /* of a fleet team: kb_quota_set_fleet_share() */

        struct quota_bucket minute[QUOTA_BUCKETS];
        uint64_t day;           /* days since the epoch (UTC) of the day counters */
        uint64_t day_tokens;
        uint64_t day_cost;
        uint64_t month;         /* year * 12 + month - 1 of the month counters */
        uint64_t month_tokens;
        uint64_t month_cost;

        uint64_t in_flight;
        uint64_t reserved_tokens;
        uint64_t reserved_cost;

        /* for first_in_window: until when the last denial's window lasts */
        uint64_t denied_until[_KB_QUOTA_LIMIT_MAX];
};

struct kb_quota {
        struct quota_team **teams; /* sorted by name */
        size_t n_teams;
        /* What of a fleet team's limits this host enforces, in millionths
         * (kb_quota_set_fleet_share). */
        uint32_t fleet_share_ppm;
};

struct quota_team *quota_find_team(const struct kb_quota *q, const char *name);

/* quota-calendar.c */
uint64_t quota_sat_add(uint64_t a, uint64_t b);
uint64_t quota_sat_sub(uint64_t a, uint64_t b);
uint64_t quota_clamp_time(uint64_t usec);
uint64_t quota_day_of(uint64_t usec);
uint64_t quota_month_of(uint64_t usec);
uint64_t quota_month_start_usec(uint64_t month);
/* Minute windows: usage at t lives in bucket k = ceil(t / 1 s) and counts
 * while now < k s + 60 s, i.e. for k in [kmin(now), kmax(now)]. */
uint64_t quota_bucket_key(uint64_t t);
uint64_t quota_bucket_expiry(uint64_t k);
void quota_window_keys(uint64_t now, uint64_t *ret_kmin, uint64_t *ret_kmax);
bool quota_bucket_counts(uint64_t k, uint64_t now);
void quota_team_reset_counters(struct quota_team *t);
