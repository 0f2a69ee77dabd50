#include "rtt.h"

#include <stdint.h>

#include "cortexm.h"

#define RTT_MODE_NO_BLOCK_SKIP 0u

typedef struct {
    const char *name;
    char *buffer;
    uint32_t size;
    volatile uint32_t wr_off; /* written by the target */
    volatile uint32_t rd_off; /* written by the host */
    uint32_t flags;
} rtt_ring_t;

typedef struct {
    char id[16];
    int32_t max_up;
    int32_t max_down;
    rtt_ring_t up[1];
    rtt_ring_t down[1];
} rtt_control_block_t;

/* The name and layout are what RTT hosts look for. */
rtt_control_block_t _SEGGER_RTT __attribute__((used, aligned(4)));

static char s_up[RTT_UP_BUFFER_SIZE];
static char s_down[RTT_DOWN_BUFFER_SIZE];

void rtt_init(void)
{
    rtt_control_block_t *cb = &_SEGGER_RTT;
    cb->max_up = 1;
    cb->max_down = 1;
    cb->up[0] = (rtt_ring_t){"Terminal", s_up, sizeof s_up, 0, 0, RTT_MODE_NO_BLOCK_SKIP};
    cb->down[0] = (rtt_ring_t){"Terminal", s_down, sizeof s_down, 0, 0, RTT_MODE_NO_BLOCK_SKIP};
    cpu_dmb();
    /* Write the id last and not as one literal, so a host never finds a
     * half-initialised block nor a copy of the id in flash. */
    static const char id_tail[] = "GGER RTT";
    for (unsigned i = 0; i < sizeof id_tail; i++) {
        cb->id[2 + i] = id_tail[i];
    }
    cpu_dmb();
    cb->id[0] = 'S';
    cb->id[1] = 'E';
    cpu_dmb();
}

size_t rtt_write(const char *data, size_t len)
{
    rtt_ring_t *r = &_SEGGER_RTT.up[0];
    uint32_t wr = r->wr_off;
    uint32_t rd = r->rd_off;
    uint32_t free_bytes = (rd > wr) ? (rd - wr - 1u) : (r->size - (wr - rd) - 1u);
    if (len > free_bytes) {
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        r->buffer[wr] = data[i];
        wr++;
        if (wr == r->size) {
            wr = 0;
        }
    }
    cpu_dmb();
    r->wr_off = wr;
    return len;
}
