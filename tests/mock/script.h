/* SPDX-License-Identifier: MIT */
#pragma once

/* script.c: named failure onsets. PUT /mock/scripts/NAME sets one, DELETE
 * removes it, GET shows it with its counter; a request carrying
 * "x-mock-script: NAME" counts toward NAME and, past its "after" count,
 * gets its status, its growing delay, or usage nulled. See README.md. */

#include "mock.h"

#define MOCK_SCRIPTS_MAX 64
#define MOCK_SCRIPT_NAME_MAX 64
/* mock_script_hook(): not a control request, go on answering. */
#define MOCK_SCRIPT_PASS 2

/* For every request, before the delay: answers /mock/scripts/NAME itself
 * (returns MOCK_KEEP, MOCK_CLOSE or -errno), else applies the request's
 * x-mock-script to *delay_ms, *ret_status (0: none) and r->bad_usage and
 * returns MOCK_SCRIPT_PASS. Thread-safe. */
int mock_script_hook(struct mock_reply *r, uint64_t *delay_ms, uint64_t *ret_status);
