/* Node 2 application: for each received packet, decode the Node 1 frame,
 * read the BMP280, and write one JSON line. */
#include <stdbool.h>
#include <stdint.h>

#include "board.h"
#include "bmp280.h"
#include "frame.h"
#include "telemetry.h"

#ifndef NODE2_MAX_LINES
#define NODE2_MAX_LINES 0 /* 0: run forever */
#endif

/* Retry a failed BMP280 initialisation at most this often. */
#define BMP280_RETRY_MS 5000u

static void write_text(const char *s)
{
    size_t n = 0;
    while (s[n] != '\0') {
        n++;
    }
    board_write_line(s, n);
}

int main(void)
{
    static char line[TELEMETRY_LINE_MAX];
    static radio_packet_t pkt;
    bmp280_t bmp;
    uint32_t seq = 0;
    uint32_t packets_received = 0;
    uint32_t crc_errors = 0;
    uint32_t bmp_retry_at = 0;

    board_init();
    if (bmp280_init(&bmp, board_bmp280_bus()) != BMP280_OK) {
        write_text("node2: BMP280 not found, retrying\n");
        bmp_retry_at = board_millis() + BMP280_RETRY_MS;
    }

    for (;;) {
        if (!board_radio_receive(&pkt)) {
            board_wait_event();
            continue;
        }

        telemetry_t t = {0};
        frame_t frame;
        if (pkt.phy_crc_ok && frame_decode(pkt.data, pkt.len, &frame) == FRAME_OK) {
            packets_received++;
            t.has_node1 = true;
            t.node1_temperature_centi = frame.temperature_centi;
            t.node1_humidity_centi = frame.humidity_centi;
            t.node1_gas_resistance = frame.gas_resistance;
        } else {
            crc_errors++;
        }

        if (!bmp.initialised && (int32_t)(board_millis() - bmp_retry_at) >= 0) {
            if (bmp280_init(&bmp, board_bmp280_bus()) != BMP280_OK) {
                bmp_retry_at = board_millis() + BMP280_RETRY_MS;
            }
        }
        bmp280_measurement_t m;
        if (bmp.initialised && bmp280_read(&bmp, &m) == BMP280_OK) {
            t.has_node2 = true;
            t.node2_temperature_centi = m.temperature_centi;
            t.node2_pressure_pa = m.pressure_pa;
        }

        t.seq = ++seq;
        t.uptime_ms = board_millis();
        t.has_signal = true;
        t.rssi = pkt.rssi;
        t.snr = pkt.snr;
        t.packets_received = packets_received;
        t.crc_errors = crc_errors;

        size_t len = telemetry_format(&t, line, sizeof line);
        if (len > 0) {
            board_write_line(line, len);
        }

#if NODE2_MAX_LINES > 0
        if (seq >= (uint32_t)NODE2_MAX_LINES) {
            board_exit(0);
        }
#endif
    }
}
