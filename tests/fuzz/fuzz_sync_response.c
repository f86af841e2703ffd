/*
 * fuzz_sync_response.c - libFuzzer target for the sync worker's parsers of the other
 * answers: the event upload's results, the station config and problem details.
 *
 * Input: byte 0 chooses how many of the three fixed event ids the batch has (1..3),
 * the rest is the response body, given to every parser.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/syncworker.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const ids[3] = {"01890a5d-ac96-774b-bcce-b302099a0001",
                                       "01890a5d-ac96-774b-bcce-b302099a0002",
                                       "01890a5d-ac96-774b-bcce-b302099a0003"};
    enum sync_result res[3];
    struct sync_station st;
    char err[256], text[256];

    if (size < 1)
        return 0;
    size_t nids = 1 + data[0] % 3;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;

    if (sync_parse_upload(body, len, ids, nids, res, err, sizeof(err)) == 0) {
        for (size_t i = 0; i < nids; i++) {
            if (res[i] != SYNC_RESULT_CREATED && res[i] != SYNC_RESULT_DUPLICATE &&
                res[i] != SYNC_RESULT_REJECTED)
                abort();
        }
    }
    if (sync_parse_station(body, len, "st-12", &st, err, sizeof(err)) == 0) {
        if (st.interval_res < SYNC_INTERVAL_MIN || st.interval_res > SYNC_INTERVAL_MAX ||
            strlen(st.name) > SYNC_NAME_MAX)
            abort();
    }
    (void)sync_problem_text(body, len, text, sizeof(text));
    sync_sanitize(body, len, text, sizeof(text));
    if (strlen(text) >= sizeof(text))
        abort();
    return 0;
}
