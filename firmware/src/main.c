/* Node 2 application: for each received packet, decode the Node 1 frame,
 * read the BMP280, and write one JSON line; after every HEARTBEAT_S seconds
 * without a packet, write a heartbeat line (BMP280 and stats only). */
#include <stdbool.h>
#include <stdint.h>

#include "board.h"
#include "bmp280.h"
#include "frame.h"
#include "heartbeat.h"
#include "telemetry.h"

#ifndef NODE2_MAX_LINES
#define NODE2_MAX_LINES 0 /* 0: run forever */
#endif

_Static_assert((long long)(HEARTBEAT_S) >= 0 && (long long)(HEARTBEAT_S) <= 4294967,
               "HEARTBEAT_S: 0..4294967 s");

/* Retry a failed BMP280 initialisation at most this often. */
#define BMP280_RETRY_MS 5000u

typedef struct {
    bmp280_t bmp;
    uint32_t bmp_retry_at;
    uint32_t seq;              /* lines written */
    uint32_t packets_received; /* valid frames */
    uint32_t crc_errors;       /* bad frames */
    heartbeat_t heartbeat;
} node2_t;

static void write_text(const char *s)
{
    size_t n = 0;
    while (s[n] != '\0') {
        n++;
    }
    board_write_line(s, n);
}

/* Node 2's own reading into t (has_node2 stays false without one). */
static void read_node2(node2_t *n, telemetry_t *t)
{
    if (!n->bmp.initialised && (int32_t)(board_millis() - n->bmp_retry_at) >= 0) {
        if (bmp280_init(&n->bmp, board_bmp280_bus()) != BMP280_OK) {
            n->bmp_retry_at = board_millis() + BMP280_RETRY_MS;
        }
    }
    bmp280_measurement_t m;
    if (n->bmp.initialised && bmp280_read(&n->bmp, &m) == BMP280_OK) {
        t->has_node2 = true;
        t->node2_temperature_centi = m.temperature_centi;
        t->node2_pressure_pa = m.pressure_pa;
    }
}

/* Completes t with Node 2's reading, the line counter, uptime and stats, and
 * writes it. Every line (a packet's or a heartbeat) counts in seq and
 * restarts the heartbeat timer. */
static void write_line(node2_t *n, telemetry_t *t)
{
    static char line[TELEMETRY_LINE_MAX];

    read_node2(n, t);
    t->seq = ++n->seq;
    t->uptime_ms = board_millis();
    t->packets_received = n->packets_received;
    t->crc_errors = n->crc_errors;

    size_t len = telemetry_format(t, line, sizeof line);
    if (len > 0) {
        board_write_line(line, len);
    }
    heartbeat_line_written(&n->heartbeat, t->uptime_ms);

#if NODE2_MAX_LINES > 0
    if (n->seq >= (uint32_t)NODE2_MAX_LINES) {
        board_exit(0);
    }
#endif
}

int main(void)
{
    static radio_packet_t pkt;
    static node2_t n;

    board_init();
    heartbeat_init(&n.heartbeat, (uint32_t)HEARTBEAT_S * 1000u, board_millis());
    if (bmp280_init(&n.bmp, board_bmp280_bus()) != BMP280_OK) {
        write_text("node2: BMP280 not found, retrying\n");
        n.bmp_retry_at = board_millis() + BMP280_RETRY_MS;
    }

    for (;;) {
        if (board_radio_receive(&pkt)) {
            telemetry_t t = {0};
            frame_t frame;
            if (pkt.phy_crc_ok && frame_decode(pkt.data, pkt.len, &frame) == FRAME_OK) {
                n.packets_received++;
                t.has_node1 = true;
                t.node1_temperature_centi = frame.temperature_centi;
                t.node1_humidity_centi = frame.humidity_centi;
                t.node1_gas_resistance = frame.gas_resistance;
            } else {
                n.crc_errors++;
            }
            t.has_signal = true;
            t.rssi = pkt.rssi;
            t.snr = pkt.snr;
            write_line(&n, &t);
        } else if (heartbeat_due(&n.heartbeat, board_millis())) {
            /* No packet: no node1, no signal; the stats do not change. */
            telemetry_t t = {0};
            write_line(&n, &t);
        } else {
            board_wait_event();
        }
    }
}
