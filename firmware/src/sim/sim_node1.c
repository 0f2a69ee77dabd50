#include "sim_node1.h"

#include "frame.h"

static uint32_t next_rand(uint32_t *state)
{
    /* xorshift32: deterministic, no libc */
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    return x;
}

/* Random walk step in [-step, +step], reflected into [lo, hi]. */
static int32_t walk(uint32_t *rng, int32_t v, int32_t step, int32_t lo, int32_t hi)
{
    int32_t span = 2 * step + 1;
    v += (int32_t)(next_rand(rng) % (uint32_t)span) - step;
    if (v < lo) {
        v = lo + (lo - v);
    }
    if (v > hi) {
        v = hi - (v - hi);
    }
    return v;
}

void sim_node1_init(sim_node1_t *s, uint32_t seed, uint32_t interval_ms, uint32_t first_ms,
                    uint32_t frames)
{
    s->rng = seed != 0u ? seed : 0x2545F491u;
    s->interval_ms = interval_ms;
    s->next_ms = first_ms;
    s->frames = frames;
    s->sent = 0;
    s->seq = 0;
    s->temperature_centi = 2400;
    s->humidity_centi = 5000;
    s->gas_resistance = 100000;
    s->rssi = -60;
    s->snr = 8;
}

bool sim_node1_poll(sim_node1_t *s, uint32_t now_ms, radio_packet_t *pkt)
{
    if (s->frames != 0u && s->sent >= s->frames) {
        return false; /* gone quiet */
    }
    if ((int32_t)(now_ms - s->next_ms) < 0) {
        return false;
    }
    s->next_ms += s->interval_ms;

    s->temperature_centi = walk(&s->rng, s->temperature_centi, 15, 2000, 2800);
    s->humidity_centi = walk(&s->rng, s->humidity_centi, 40, 4000, 6000);
    s->gas_resistance = walk(&s->rng, s->gas_resistance, 2500, 50000, 150000);
    s->rssi = walk(&s->rng, s->rssi, 2, -95, -30);
    s->snr = walk(&s->rng, s->snr, 1, -5, 12);

    frame_t f = {
        .node_id = 1,
        .seq = s->seq++,
        .temperature_centi = (int16_t)s->temperature_centi,
        .humidity_centi = (uint16_t)s->humidity_centi,
        .gas_resistance = (uint32_t)s->gas_resistance,
    };
    pkt->len = frame_encode(&f, pkt->data, sizeof pkt->data);
    pkt->phy_crc_ok = true;
    pkt->rssi = (int16_t)s->rssi;
    pkt->snr = (int8_t)s->snr;

    s->sent++;
    if (s->sent % SIM_NODE1_CORRUPT_EVERY == 0u) {
        uint32_t r = next_rand(&s->rng);
        switch ((s->sent / SIM_NODE1_CORRUPT_EVERY) % 7u) {
        case 0: /* bit flip in the payload */
            pkt->data[2u + r % 11u] ^= (uint8_t)(1u << (r >> 8) % 8u);
            break;
        case 1: /* bit flip in the CRC */
            pkt->data[13u + r % 2u] ^= (uint8_t)(1u << (r >> 8) % 8u);
            break;
        case 2:
            pkt->data[0] = 0x5A;
            break;
        case 3:
            pkt->data[1] = 2;
            break;
        case 4: /* truncated */
            pkt->len = 4u + r % (FRAME_LEN - 4u);
            break;
        case 5: /* trailing garbage */
            pkt->data[FRAME_LEN] = (uint8_t)r;
            pkt->len = FRAME_LEN + 1u;
            break;
        default: /* the radio itself saw a CRC error */
            pkt->phy_crc_ok = false;
            pkt->data[5] ^= 0x10u;
            break;
        }
    }
    return true;
}
