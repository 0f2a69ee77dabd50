/* Node 2 heartbeat: when no LoRa packet arrives for HEARTBEAT_S seconds,
 * Node 2 writes a line of its own (its BMP280 reading and its stats), and
 * another after every further HEARTBEAT_S seconds of silence. This is the
 * timer alone, a pure function of the millisecond clock it is given. */
#ifndef NODE2_HEARTBEAT_H
#define NODE2_HEARTBEAT_H

#include <stdbool.h>
#include <stdint.h>

/* Seconds of radio silence before a heartbeat line (0: no heartbeats).
 * A compile-time setting: -DHEARTBEAT_S=2 for a quick test build. */
#ifndef HEARTBEAT_S
#define HEARTBEAT_S 30
#endif

typedef struct {
    uint32_t period_ms; /* 0: never due */
    uint32_t last_ms;   /* when the last line went out (or init) */
} heartbeat_t;

/* Starts the timer at now_ms (reset: the first heartbeat comes period_ms
 * later unless a packet arrives first). */
void heartbeat_init(heartbeat_t *h, uint32_t period_ms, uint32_t now_ms);

/* A line went out at now_ms, a packet's or a heartbeat: the silence starts
 * again from there. */
void heartbeat_line_written(heartbeat_t *h, uint32_t now_ms);

/* True when period_ms have passed since the last line (wrap-safe: the
 * millisecond clock may wrap around between two lines). */
bool heartbeat_due(const heartbeat_t *h, uint32_t now_ms);

#endif
