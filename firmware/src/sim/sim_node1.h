/* Deterministic simulated Node 1: a BME680 node sending a v1 frame every
 * interval, with plausible drifting values and a corrupted frame now and then;
 * optionally it goes quiet for good after a number of frames. */
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
    uint32_t frames;  /* frames to send before going quiet; 0: forever */
    uint32_t sent;
    uint16_t seq;
    int32_t temperature_centi; /* 2000..2800 */
    int32_t humidity_centi;    /* 4000..6000 */
    int32_t gas_resistance;    /* 50000..150000 */
    int32_t rssi;              /* -95..-30 */
    int32_t snr;               /* -5..12 */
} sim_node1_t;

/* The first frame is on air at first_ms, then one every interval_ms; after
 * `frames` frames (0: never) the node falls silent. */
void sim_node1_init(sim_node1_t *s, uint32_t seed, uint32_t interval_ms, uint32_t first_ms,
                    uint32_t frames);

/* True when a frame is "on air" at now_ms; fills *pkt. */
bool sim_node1_poll(sim_node1_t *s, uint32_t now_ms, radio_packet_t *pkt);

#endif
