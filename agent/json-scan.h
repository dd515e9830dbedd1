/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 9 of 12, bodies and usage: calls no other layer. */

/* The top-level members of a JSON object, found without building the
 * document: for reading a few fields (the usage object, the model) out of a
 * provider's answer, where a full parse costs far more than the fields.
 * Only the top level is checked in full (strings closed, scalars spelt
 * right, commas and colons where they belong, nothing after the object but
 * whitespace); nested containers only for balance and closed strings;
 * member values are handed out as text for the caller to parse. Library-
 * like: never logs. */

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#define KB_JSON_SCAN_MAX_DEPTH 128

/* Called for each top-level member, in order (a repeated key is called
 * again: JSON parsers keep the last). key is the raw text between the
 * quotes. A negative return stops the scan and is returned. */
typedef int (*kb_json_member_t)(const char *key, size_t key_len, const char *value, size_t value_len,
                                void *userdata);

/* Whether a key handed out by the scan is want (false for a NULL want). */
static inline bool kb_json_key_is(const char *key, size_t key_len, const char *want) {
        return want && strlen(want) == key_len && memcmp(key, want, key_len) == 0;
}

/* 0 when s is one object and every member was handed out; -EINVAL when it
 * is not a well-formed object (or nests deeper than KB_JSON_SCAN_MAX_DEPTH);
 * -EILSEQ when a key holds an escape (the caller should parse the document
 * instead of matching raw key text). */
int kb_json_scan_object(const char *s, size_t n, kb_json_member_t member, void *userdata);

/* Called for each element of an array, in order, as text. */
typedef int (*kb_json_element_t)(const char *value, size_t value_len, void *userdata);

/* 0 when s is one array and every element was handed out; -EINVAL when it
 * is not a well-formed array (elements checked as kb_json_scan_object
 * checks member values). */
int kb_json_scan_array(const char *s, size_t n, kb_json_element_t element, void *userdata);
