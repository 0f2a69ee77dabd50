/* Prints many telemetry lines (normal values, extremes, missing groups,
 * truncated buffers) to stdout, one per line, for a JSON parser to check. */
#include <stdio.h>
#include <stdint.h>

#include "telemetry.h"

static void emit(const telemetry_t *t, size_t cap)
{
    char buf[TELEMETRY_LINE_MAX];
    size_t n = telemetry_format(t, buf, cap);
    if (n > 0) {
        fwrite(buf, 1, n, stdout);
    }
}

int main(void)
{
    static const int32_t temps[] = {INT32_MIN, -4000, -1001, -100, -99, -5, -1, 0, 1, 5,
                                    99, 100, 2508, 2670, 8500, INT16_MAX, INT32_MAX};
    static const uint32_t unsigneds[] = {0, 1, 99, 100, 5540, 101325, 150000, UINT32_MAX};
    static const int32_t signals[] = {INT32_MIN, -157, -33, -1, 0, 13, INT32_MAX};
    uint32_t seq = 0;

    for (size_t a = 0; a < sizeof temps / sizeof temps[0]; a++) {
        for (size_t b = 0; b < sizeof unsigneds / sizeof unsigneds[0]; b++) {
            for (int groups = 0; groups < 8; groups++) {
                telemetry_t t = {
                    .seq = ++seq,
                    .uptime_ms = unsigneds[b] ^ seq,
                    .has_node1 = (groups & 1) != 0,
                    .node1_temperature_centi = temps[a],
                    .node1_humidity_centi = unsigneds[b],
                    .node1_gas_resistance = unsigneds[(b + 3) % 8],
                    .has_node2 = (groups & 2) != 0,
                    .node2_temperature_centi = temps[(a + 5) % 17],
                    .node2_pressure_pa = unsigneds[(b + 5) % 8],
                    .has_signal = (groups & 4) != 0,
                    .rssi = signals[(a + b) % 7],
                    .snr = signals[(a + 2 * b) % 7],
                    .packets_received = seq,
                    .crc_errors = seq / 7,
                };
                emit(&t, TELEMETRY_LINE_MAX);
                /* and squeezed into smaller buffers */
                emit(&t, 60 + (seq % 200));
            }
        }
    }
    return 0;
}
