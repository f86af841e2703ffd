/*
 * provision.h - `lockerctl provision`: a fresh station becomes a registered one
 * (see provision.c and lockerctl(8)).
 */
#ifndef LOCKERD_PROVISION_H
#define LOCKERD_PROVISION_H

#include <stdbool.h>

/* argv holds the words after "provision" (lockerctl has taken out its global options,
 * --json among them). json: one JSON object on stdout instead of the table. Runs on the
 * station itself, without lockerd; writes only below the state directory and the
 * config file. Returns lockerctl's exit status: 0 every step ok, 1 a step failed, 2
 * usage. */
int provision_main(int argc, char **argv, bool json);

#endif
