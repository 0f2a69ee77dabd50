/* Deterministic simulated Node 1: a BME680 node sending a v1 frame every
 * interval, with plausible drifting values and a corrupted frame now and then. */
#ifndef NODE2_SIM_NODE1_H
#define NODE2_SIM_NODE1_H

#include <stdbool.h>
#include <stdint.h>

#include "radio.h"

/* Every SIM_NODE1_CORRUPT_EVERY-th frame is damaged (the kind of damage
 * cycles: payload bit flip, CRC bit flip, bad magic, bad version, short,
 * long, radio CRC error). */
#define SIM_NODE1_CORRUPT_EVERY 7u

typedef struct {
    uint32_t rng;
    uint32_t interval_ms;
    uint32_t next_ms;
    uint32_t sent;
    uint16_t seq;
    int32_t temperature_centi; /* 2000..2800 */
    int32_t humidity_centi;    /* 4000..6000 */
    int32_t gas_resistance;    /* 50000..150000 */
    int32_t rssi;              /* -95..-30 */
    int32_t snr;               /* -5..12 */
} sim_node1_t;

void sim_node1_init(sim_node1_t *s, uint32_t seed, uint32_t interval_ms, uint32_t first_ms);

/* True when a frame is "on air" at now_ms; fills *pkt. */
bool sim_node1_poll(sim_node1_t *s, uint32_t now_ms, radio_packet_t *pkt);

#endif
