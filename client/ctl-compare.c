/* SPDX-License-Identifier: MIT */
/* keybrokerctl model compare (placeholder until the shadow lands). */

#include "ctl.h"

int ctl_cmd_model_compare(const struct ctl *ctl, int argc, char **argv) {
        (void) ctl, (void) argc, (void) argv;
        fprintf(stderr, "keybrokerctl: model compare is not implemented yet\n");
        return CTL_EXIT_ERROR;
}
