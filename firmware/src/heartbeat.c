#include "heartbeat.h"

void heartbeat_init(heartbeat_t *h, uint32_t period_ms, uint32_t now_ms)
{
    h->period_ms = period_ms;
    h->last_ms = now_ms;
}

void heartbeat_line_written(heartbeat_t *h, uint32_t now_ms)
{
    h->last_ms = now_ms;
}

bool heartbeat_due(const heartbeat_t *h, uint32_t now_ms)
{
    return h->period_ms != 0u && (uint32_t)(now_ms - h->last_ms) >= h->period_ms;
}
