/* SPDX-License-Identifier: MIT */
/* keybrokerctl model baseline / promote / status (placeholders). */

#include "ctl.h"

static int todo(const char *what) {
        fprintf(stderr, "keybrokerctl: model %s is not implemented yet\n", what);
        return CTL_EXIT_ERROR;
}

int ctl_cmd_model_baseline(const struct ctl *ctl, int argc, char **argv) {
        (void) ctl, (void) argc, (void) argv;
        return todo("baseline");
}

int ctl_cmd_model_promote(const struct ctl *ctl, int argc, char **argv) {
        (void) ctl, (void) argc, (void) argv;
        return todo("promote");
}

int ctl_cmd_model_status(const struct ctl *ctl, int argc, char **argv) {
        (void) ctl, (void) argc, (void) argv;
        return todo("status");
}
