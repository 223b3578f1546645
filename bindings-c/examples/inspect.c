/* inspect.c: check a Spate partition directory through libspate.
 *
 *   cc -Wall -Werror -Ibindings-c/include inspect.c target/release/libspate.a -lpthread -ldl -lm
 *   ./a.out ./spate-data/demo-0
 */
#include <inttypes.h>
#include <stdio.h>

#include "spate.h"

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PARTITION_DIR\n", argv[0]);
        return 2;
    }
    spate_log_summary summary;
    spate_status status = spate_log_inspect(argv[1], &summary);
    if (status != SPATE_STATUS_OK) {
        fprintf(stderr, "spate %s: %s\n", spate_version(), spate_last_error_message());
        return 1;
    }
    printf("segments=%" PRIu64 " batches=%" PRIu64 " offsets=[%" PRId64 ",%" PRId64 ") healthy=%u\n",
           summary.segments, summary.batches, summary.first_offset, summary.next_offset,
           (unsigned)summary.healthy);
    return summary.healthy ? 0 : 3;
}
