/*
 * fuzz_sync_msg.c - libFuzzer target for syncmsg_decode(), the check every message
 * between lockerd and its sync worker passes, and the accessors on its result.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/syncmsg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct syncmsg m;
    static char str[SYNCMSG_MAX + 1];
    char why[200];

    if (syncmsg_decode(data, size, &m, why, sizeof(why)) < 0)
        return 0;
    if (m.count < 0 || m.count > SYNCMSG_MAX_FIELDS)
        abort();
    for (int i = 0; i < m.count; i++) {
        const struct syncmsg_field *f = &m.fields[i];
        if (f->data < data || f->data + f->len > data + size)
            abort();
        if (f->len == 8)
            (void)syncmsg_field_int(f);
        (void)syncmsg_field_str(f, str, sizeof(str));
    }
    for (int tag = 1; tag < F_TAG_MAX; tag++) {
        int pos = 0;
        while (syncmsg_next(&m, (enum syncmsg_tag)tag, &pos) != NULL)
            ;
        (void)syncmsg_int(&m, (enum syncmsg_tag)tag, 0);
    }
    /* What decodes must also pass the sender's check. */
    uint8_t *copy = malloc(size);
    if (copy == NULL)
        return 0;
    memcpy(copy, data, size);
    if (syncmsg_decode(copy, size, &m, why, sizeof(why)) < 0)
        abort();
    free(copy);
    return 0;
}
