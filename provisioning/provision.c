/*
 * provision.c - `lockerctl provision` (being written).
 */
#include "provisioning/provision.h"

#include <stdio.h>

int provision_main(int argc, char **argv, bool json)
{
    (void)argc;
    (void)argv;
    (void)json;
    fprintf(stderr, "lockerctl: provision is not available yet\n");
    return 1;
}
