/* SPDX-License-Identifier: MIT */
#pragma once

/* What keybrokerd and keybrokerctl share, and what other tools may build
 * against: default paths, admin API paths, journal MESSAGE_IDs and field
 * names. Names here are the public contract of docs/design.md. */

#define KB_VERSION "0.1.0"

#define KB_DEFAULT_CONFIG "/etc/keybroker/keybroker.conf"
#define KB_DEFAULT_LISTEN "/run/keybroker/api.sock"
#define KB_DEFAULT_ADMIN "/run/keybroker/admin.sock"
#define KB_DEFAULT_STATE_DIR "/var/lib/keybroker"
#define KB_DEFAULT_KEYSTORE "/var/lib/keybroker/keys.sealed"

/* Socket-activation fd names (FileDescriptorName=). */
#define KB_FDNAME_API "api"
#define KB_FDNAME_ADMIN "admin"

/* Journal MESSAGE_IDs. */
#define KB_MID_REQUEST "65ab453e95ed4c0e99aea91870cea75c"
#define KB_MID_KEY "06f9068c76c44d218e62b7f8f75da06d"
#define KB_MID_QUOTA "d3d1e6b438f94b958707dfc486f2e5f9"
#define KB_MID_ROUTE "da52a66de9f14751b27d771e64ef1e05"
#define KB_MID_CONFIG "52fd69280afb4330966571bb5772f62f"
#define KB_MID_PREFLIGHT "ed744d6e5d9d4128b630050956cdab33"
#define KB_MID_LIFECYCLE "e43fe4197ddd4b8a9f47d92e5be5ccce"
#define KB_MID_STORE "cfe4b02a7d4b41c5a0bb51ebad71f6d3"
#define KB_MID_PROMOTE "5ec076b4fc194e50a600372c4a6b303b"
#define KB_MID_SHADOW "478e1a1c28a541779bf26af7cfdf2f90"

#define KB_SYSLOG_IDENTIFIER "keybrokerd"

/* App API headers. */
#define KB_HDR_TEAM "X-Keybroker-Team"
#define KB_HDR_REQUEST_ID "x-keybroker-request-id"
#define KB_HDR_ROUTE "x-keybroker-route"
#define KB_HDR_TEAM_OUT "x-keybroker-team"

#define KB_PATH_WHOAMI "/v1/keybroker/whoami"
