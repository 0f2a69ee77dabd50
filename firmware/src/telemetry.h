/* One JSON telemetry line per received packet or heartbeat (line protocol v1). */
#ifndef NODE2_TELEMETRY_H
#define NODE2_TELEMETRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest possible full line (all fields at their extremes) plus NUL. */
#define TELEMETRY_LINE_MAX 320u

typedef struct {
    uint32_t seq;        /* Node 2 line counter */
    uint32_t uptime_ms;

    bool has_node1;      /* false when the frame was bad */
    int32_t node1_temperature_centi;
    uint32_t node1_humidity_centi;
    uint32_t node1_gas_resistance;

    bool has_node2;      /* false when the BMP280 had no measurement */
    int32_t node2_temperature_centi;
    uint32_t node2_pressure_pa;   /* printed as hPa with 2 decimals */

    bool has_signal;     /* false for a heartbeat (no packet) */
    int32_t rssi;        /* dBm */
    int32_t snr;         /* dB */

    uint32_t packets_received;
    uint32_t crc_errors;
} telemetry_t;

/* Formats the line, newline-terminated, into buf and NUL-terminates it.
 * Returns its length (without the NUL). If the full line does not fit, a
 * shorter valid line is written (groups dropped, then stats); if not even
 * the shortest line fits, returns 0 and writes nothing but a NUL (cap > 0).
 * Never writes more than cap bytes. */
size_t telemetry_format(const telemetry_t *t, char *buf, size_t cap);

/* Fixed-point helpers (exposed for tests): write value/100 with exactly two
 * decimals ("-0.05", "1013.25"). Return chars written or 0 if no room. */
size_t telemetry_fmt_centi(char *buf, size_t cap, int64_t centi);

#endif
