/*
 * fuzz_sync_feed.c - libFuzzer target for the sync worker's RPDE page parser and the
 * helpers it uses (RFC 3339 times, the next-URL origin check).
 *
 * Input: byte 0 chooses the feed (even: reservations, odd: credentials), the rest is
 * the response body. The body is also tried as an RFC 3339 string and as a next URL.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/syncmsg.h"
#include "daemon/syncworker.h"

#define BASE "https://127.0.0.1:8443/keystation/v1"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sync_page page;
    char err[256];

    if (size < 1)
        return 0;
    int feed = (data[0] & 1) ? SYNC_FEED_CREDENTIALS : SYNC_FEED_RESERVATIONS;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;

    if (sync_parse_page(body, len, feed, BASE, &page, err, sizeof(err)) == 0) {
        /* What the worker relies on: a clean cursor under the base, bounded items. */
        if (!sync_url_under(page.next, BASE) || page.count > SYNC_PAGE_ITEMS_MAX ||
            page.last_page != (page.count == 0))
            abort();
        for (size_t i = 0; i < page.count; i++) {
            const struct sync_item *it = &page.items[i];
            if (strlen(it->id) < 1 || strlen(it->id) > SYNC_ID_MAX)
                abort();
            if (!it->deleted && feed == SYNC_FEED_RESERVATIONS &&
                (it->end <= it->start || it->ncompartments < 1))
                abort();
        }
        sync_page_free(&page);
    } else if (err[0] == '\0') {
        abort(); /* a refusal always says why */
    }

    /* The same bytes as a NUL-terminated string for the string parsers. */
    char *s = malloc(len + 1);
    if (s == NULL)
        return 0;
    memcpy(s, body, len);
    s[len] = '\0';
    int64_t ms;
    (void)sync_parse_rfc3339(s, &ms);
    (void)sync_url_under(s, BASE);
    free(s);
    return 0;
}
