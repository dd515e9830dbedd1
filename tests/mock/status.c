/* SPDX-License-Identifier: MIT */
/* A provider's status page, as Atlassian Statuspage serves it
 * (status.openai.com, status.anthropic.com): GET /api/v2/status.json with
 * the indicator --status-indicator says, and a JSON document that is not
 * Statuspage's for the tests of a wrong status_url. No key is asked for:
 * a status page is public. */

#include "mock.h"

#include <errno.h>
#include <string.h>

#include "util.h"

/* Statuspage's own words for each indicator. */
static const char *description_of(const char *indicator) {
        if (streq(indicator, "minor"))
                return "Minor Service Outage";
        if (streq(indicator, "major"))
                return "Partial System Outage";
        if (streq(indicator, "critical"))
                return "Major Service Outage";
        return "All Systems Operational";
}

int mock_status_answer(int fd, const struct mock_request *req) {
        bool status = streq(req->path, "/api/v2/status.json");

        if (!streq(req->method, "GET") || (!status && !streq(req->path, "/api/v2/not-statuspage.json")))
                return -ENOENT;
        struct mock_reply r = {
                .fd = fd,
                .req = req,
                .cut_after = -1,
                .script.model = MOCK_DEFAULT_MODEL,
        };
        if (!status)
                return mock_send_json(&r, 200, json_pack("{ss}", "hello", "world"));
        const char *indicator = mock_cfg->status_indicator ?: "none";
        return mock_send_json(&r, 200,
                              json_pack("{s{ss ss ss} s{ss ss}}", "page", "id", "mock", "name", "kb-mock", "url",
                                        "http://127.0.0.1", "status", "indicator", indicator, "description",
                                        description_of(indicator)));
}
