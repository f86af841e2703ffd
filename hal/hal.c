/*
 * hal.c - backend tables by config value.
 *
 * A backend that is not compiled in has no table: the daemon reports that at start
 * instead of failing later.
 */
#include "hal/hal.h"

#include <stddef.h>

const struct gpio_ops *hal_gpio_ops(enum gpio_backend backend)
{
    switch (backend) {
    case GPIO_BACKEND_SIM:
        return &gpio_sim_ops;
    case GPIO_BACKEND_GPIOD:
        return &gpio_gpiod_ops;
    }
    return NULL;
}

const struct reader_ops *hal_reader_ops(enum reader_backend backend)
{
    switch (backend) {
    case READER_BACKEND_SIM:
        return &reader_sim_ops;
    case READER_BACKEND_LIBNFC:
        return &reader_libnfc_supervised_ops; /* reader_libnfc_ops in a child process */
    }
    return NULL;
}
