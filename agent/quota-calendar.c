/* SPDX-License-Identifier: MIT */
/* The calendar of the quota counters: saturating counts, UTC days and
 * months (no libc time zone state), and the minute windows' 1-second
 * buckets. Shared by quota.c, quota-store.c and, through quota.h, the fleet
 * store's keys. */

#include "quota-internal.h"

uint64_t quota_sat_add(uint64_t a, uint64_t b) {
        uint64_t r;

        if (__builtin_add_overflow(a, b, &r))
                return UINT64_MAX;
        return r;
}

uint64_t quota_sat_sub(uint64_t a, uint64_t b) {
        return a > b ? a - b : 0;
}

/* Howard Hinnant's days <-> civil date algorithms, proleptic Gregorian:
 * exact for every day, no libc time zone state involved. */
static void civil_from_days(int64_t z, int64_t *ret_y, unsigned *ret_m) {
        z += 719468;
        int64_t era = (z >= 0 ? z : z - 146096) / 146097;
        unsigned doe = (unsigned) (z - era * 146097);
        unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
        unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        unsigned mp = (5 * doy + 2) / 153;
        unsigned m = mp < 10 ? mp + 3 : mp - 9;

        *ret_y = (int64_t) yoe + era * 400 + (m <= 2);
        *ret_m = m;
}

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
        y -= m <= 2;
        int64_t era = (y >= 0 ? y : y - 399) / 400;
        unsigned yoe = (unsigned) (y - era * 400);
        unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
        unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

        return era * 146097 + (int64_t) doe - 719468;
}

uint64_t quota_clamp_time(uint64_t usec) {
        return MIN(usec, QUOTA_MAX_TIME);
}

uint64_t quota_day_of(uint64_t usec) {
        return usec / QUOTA_DAY;
}

uint64_t quota_month_of(uint64_t usec) {
        int64_t y;
        unsigned m;

        civil_from_days((int64_t) quota_day_of(usec), &y, &m);
        return (uint64_t) (y * 12 + (int64_t) m - 1);
}

uint64_t quota_month_start_usec(uint64_t month) {
        return (uint64_t) days_from_civil((int64_t) (month / 12), (unsigned) (month % 12) + 1, 1) * QUOTA_DAY;
}

uint64_t kb_quota_next_day_usec(uint64_t now_usec) {
        now_usec = quota_clamp_time(now_usec);
        return (quota_day_of(now_usec) + 1) * QUOTA_DAY;
}

uint64_t kb_quota_next_month_usec(uint64_t now_usec) {
        now_usec = quota_clamp_time(now_usec);
        return quota_month_start_usec(quota_month_of(now_usec) + 1);
}

/* Minute windows. Usage at t lives in bucket k = ceil(t / 1 s) and counts
 * while now < k s + 60 s, i.e. for k in [kmin(now), kmax(now)]. */
uint64_t quota_bucket_key(uint64_t t) {
        return t / QUOTA_SEC + (t % QUOTA_SEC != 0);
}

uint64_t quota_bucket_expiry(uint64_t k) {
        return quota_sat_add(k * QUOTA_SEC, QUOTA_MINUTE);
}

void quota_window_keys(uint64_t now, uint64_t *ret_kmin, uint64_t *ret_kmax) {
        /* smallest k with k s + 60 s > now */
        *ret_kmin = now < QUOTA_MINUTE ? 0 : (now - QUOTA_MINUTE) / QUOTA_SEC + 1;
        *ret_kmax = quota_bucket_key(now);
}

bool quota_bucket_counts(uint64_t k, uint64_t now) {
        uint64_t kmin, kmax;

        quota_window_keys(now, &kmin, &kmax);
        return k != QUOTA_NONE && k >= kmin && k <= kmax;
}

void kb_quota_minute_keys(uint64_t now_usec, uint64_t *ret_kmin, uint64_t *ret_kmax) {
        quota_window_keys(quota_clamp_time(now_usec), ret_kmin, ret_kmax);
}

uint64_t kb_quota_bucket_key(uint64_t usec) {
        return quota_bucket_key(quota_clamp_time(usec));
}

uint64_t kb_quota_day_of(uint64_t usec) {
        return quota_day_of(quota_clamp_time(usec));
}

uint64_t kb_quota_month_of(uint64_t usec) {
        return quota_month_of(quota_clamp_time(usec));
}

