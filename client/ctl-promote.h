/* SPDX-License-Identifier: MIT */
#pragma once

/* Shared by ctl-promote.c (promote, status) and ctl-promote-baseline.c. */

#include <jansson.h>
#include <stdbool.h>

/* The text form of GET /models/NAME/status's object. */
void ctl_promote_print_status(const json_t *j);
