/*
 * pn532_chip.h - the emulated PN532: HSU framing, power modes, registers and the
 * commands libnfc's pn532_uart driver sends.
 */
#ifndef PN532_CHIP_H
#define PN532_CHIP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct card;

/* Power-on state: asleep in LowVbat mode until the host's 55 55 wake-up. */
void chip_power_on(void);

/* Bytes from the host. */
void chip_rx(const uint8_t *buf, size_t len);

/* The card in the field changed (entered, left, or a different card): polls waiting
 * for a card are answered, a card that left stops answering. card may be NULL or a
 * card with in_field false. */
void chip_set_card(struct card *card);

/* Timers: the next deadline (CLOCK_MONOTONIC us) or -1, and running it. */
int64_t chip_deadline(void);
void chip_timer(int64_t now_us);

/* Fault injection. */
void chip_set_mute(bool mute);         /* ignore the host entirely */
void chip_set_slow(int64_t delay_us);  /* every reply frame leaves this late */
void chip_truncate_next(void);         /* the next reply frame stops halfway */
void chip_corrupt_next(void);          /* the next reply frame has a wrong DCS */
void chip_error_next(void);            /* the next command gets the error frame */
void chip_status_next(uint8_t status); /* next InDataExchange/InCommunicateThru status */

/* One line describing the chip state (for the "status" control command). */
void chip_describe(char *out, size_t len);

#endif
