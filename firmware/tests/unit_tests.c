/* Host unit tests: frame codec, CRC, BMP280 compensation and driver (against
 * the register model), telemetry formatting, the heartbeat timer. Exit status
 * 0 when all pass. */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "bmp280.h"
#include "frame.h"
#include "heartbeat.h"
#include "sim_bmp280.h"
#include "sim_node1.h"
#include "telemetry.h"

static int g_failures;
static int g_checks;

#define CHECK(cond)                                                         \
    do {                                                                    \
        g_checks++;                                                         \
        if (!(cond)) {                                                      \
            g_failures++;                                                   \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                   \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                  \
    do {                                                                    \
        long long va_ = (long long)(a), vb_ = (long long)(b);               \
        g_checks++;                                                         \
        if (va_ != vb_) {                                                   \
            g_failures++;                                                   \
            fprintf(stderr, "%s:%d: %s == %lld, expected %lld\n", __FILE__, __LINE__, #a, \
                    va_, vb_);                                              \
        }                                                                   \
    } while (0)

#define CHECK_EQ_STR(a, b)                                                  \
    do {                                                                    \
        const char *sa_ = (a), *sb_ = (b);                                  \
        g_checks++;                                                         \
        if (strcmp(sa_, sb_) != 0) {                                        \
            g_failures++;                                                   \
            fprintf(stderr, "%s:%d: got\n  %s\nexpected\n  %s\n", __FILE__, __LINE__, sa_, sb_); \
        }                                                                   \
    } while (0)

/* ---- CRC and frame ---- */

static void test_crc(void)
{
    const char *check = "123456789";
    CHECK_EQ_INT(crc16_ccitt_false((const uint8_t *)check, 9), 0x29B1);
    CHECK_EQ_INT(crc16_ccitt_false(NULL, 0), 0xFFFF);
}

static const frame_t k_frame = {
    .node_id = 1, .seq = 0xBEEF, .temperature_centi = -1234,
    .humidity_centi = 5540, .gas_resistance = 101169,
};

static void test_frame_roundtrip(void)
{
    uint8_t buf[FRAME_LEN];
    frame_t out;
    CHECK_EQ_INT(frame_encode(&k_frame, buf, sizeof buf), FRAME_LEN);
    CHECK_EQ_INT(frame_encode(&k_frame, buf, sizeof buf - 1), 0);
    /* layout: little-endian fields */
    CHECK_EQ_INT(buf[0], 0xA5);
    CHECK_EQ_INT(buf[1], 1);
    CHECK_EQ_INT(buf[2], 1);
    CHECK_EQ_INT(buf[3], 0xEF);
    CHECK_EQ_INT(buf[4], 0xBE);
    CHECK_EQ_INT(buf[5] | (buf[6] << 8), (uint16_t)-1234);
    CHECK_EQ_INT(buf[7] | (buf[8] << 8), 5540);
    CHECK_EQ_INT(buf[9] | (buf[10] << 8) | (buf[11] << 16) | ((uint32_t)buf[12] << 24), 101169);
    CHECK_EQ_INT(buf[13] | (buf[14] << 8), crc16_ccitt_false(buf, 13));

    memset(&out, 0, sizeof out);
    CHECK_EQ_INT(frame_decode(buf, sizeof buf, &out), FRAME_OK);
    CHECK_EQ_INT(out.node_id, 1);
    CHECK_EQ_INT(out.seq, 0xBEEF);
    CHECK_EQ_INT(out.temperature_centi, -1234);
    CHECK_EQ_INT(out.humidity_centi, 5540);
    CHECK_EQ_INT(out.gas_resistance, 101169);

    /* extremes survive the round trip */
    frame_t ext = {255, 65535, INT16_MIN, 65535, UINT32_MAX};
    CHECK_EQ_INT(frame_encode(&ext, buf, sizeof buf), FRAME_LEN);
    CHECK_EQ_INT(frame_decode(buf, sizeof buf, &out), FRAME_OK);
    CHECK_EQ_INT(out.temperature_centi, INT16_MIN);
    CHECK_EQ_INT(out.gas_resistance, UINT32_MAX);
}

static void test_frame_corruption(void)
{
    uint8_t good[FRAME_LEN + 8];
    uint8_t buf[FRAME_LEN + 8];
    frame_t out;
    frame_encode(&k_frame, good, sizeof good);

    CHECK_EQ_INT(frame_decode(NULL, FRAME_LEN, &out), FRAME_ERR_ARG);
    CHECK_EQ_INT(frame_decode(good, FRAME_LEN, NULL), FRAME_ERR_ARG);

    /* every short length, and long lengths */
    for (size_t len = 0; len < FRAME_LEN; len++) {
        CHECK_EQ_INT(frame_decode(good, len, &out), FRAME_ERR_SHORT);
    }
    for (size_t len = FRAME_LEN + 1; len <= sizeof good; len++) {
        CHECK_EQ_INT(frame_decode(good, len, &out), FRAME_ERR_LONG);
    }

    /* bad magic: every other value */
    for (int m = 0; m < 256; m++) {
        if (m == FRAME_MAGIC) {
            continue;
        }
        memcpy(buf, good, FRAME_LEN);
        buf[0] = (uint8_t)m;
        CHECK_EQ_INT(frame_decode(buf, FRAME_LEN, &out), FRAME_ERR_MAGIC);
    }
    /* bad version: every other value, even with a matching CRC */
    for (int v = 0; v < 256; v++) {
        if (v == FRAME_VERSION) {
            continue;
        }
        memcpy(buf, good, FRAME_LEN);
        buf[1] = (uint8_t)v;
        uint16_t crc = crc16_ccitt_false(buf, 13);
        buf[13] = (uint8_t)crc;
        buf[14] = (uint8_t)(crc >> 8);
        CHECK_EQ_INT(frame_decode(buf, FRAME_LEN, &out), FRAME_ERR_VERSION);
    }
    /* every single-bit flip in bytes 2..14 is caught by the CRC, and out is
     * left untouched */
    int crc_errors = 0;
    for (size_t byte = 2; byte < FRAME_LEN; byte++) {
        for (int bit = 0; bit < 8; bit++) {
            memcpy(buf, good, FRAME_LEN);
            buf[byte] ^= (uint8_t)(1u << bit);
            memset(&out, 0x5A, sizeof out);
            if (frame_decode(buf, FRAME_LEN, &out) == FRAME_ERR_CRC) {
                crc_errors++;
            }
            CHECK_EQ_INT(out.node_id, 0x5A);
        }
    }
    CHECK_EQ_INT(crc_errors, 13 * 8);
    /* every double-bit flip too (CRC-16 detects all 2-bit errors here) */
    int missed = 0;
    for (int a = 16; a < (int)FRAME_LEN * 8; a++) {
        for (int b = a + 1; b < (int)FRAME_LEN * 8; b++) {
            memcpy(buf, good, FRAME_LEN);
            buf[a / 8] ^= (uint8_t)(1u << (a % 8));
            buf[b / 8] ^= (uint8_t)(1u << (b % 8));
            if (frame_decode(buf, FRAME_LEN, &out) == FRAME_OK) {
                missed++;
            }
        }
    }
    CHECK_EQ_INT(missed, 0);
    CHECK_EQ_STR(frame_status_str(FRAME_ERR_CRC), "bad crc");
}

static void test_sim_node1(void)
{
    sim_node1_t s;
    radio_packet_t pkt;
    sim_node1_init(&s, 1234, 1000, 1000, 0);
    CHECK(!sim_node1_poll(&s, 999, &pkt));
    int ok = 0, bad = 0;
    for (uint32_t i = 1; i <= 700; i++) {
        CHECK(sim_node1_poll(&s, i * 1000u, &pkt));
        CHECK(!sim_node1_poll(&s, i * 1000u, &pkt));
        frame_t f;
        if (pkt.phy_crc_ok && frame_decode(pkt.data, pkt.len, &f) == FRAME_OK) {
            ok++;
            CHECK(f.temperature_centi >= 2000 && f.temperature_centi <= 2800);
            CHECK(f.humidity_centi >= 4000 && f.humidity_centi <= 6000);
            CHECK(f.gas_resistance >= 50000 && f.gas_resistance <= 150000);
        } else {
            bad++;
            CHECK_EQ_INT(i % SIM_NODE1_CORRUPT_EVERY, 0);
        }
        CHECK(pkt.rssi >= -95 && pkt.rssi <= -30);
    }
    CHECK_EQ_INT(bad, 700 / SIM_NODE1_CORRUPT_EVERY);
    CHECK_EQ_INT(ok, 700 - bad);
}

static void test_sim_node1_goes_quiet(void)
{
    sim_node1_t s;
    radio_packet_t pkt;
    sim_node1_init(&s, 1234, 1000, 1000, 3);
    for (uint32_t i = 1; i <= 3; i++) {
        CHECK(sim_node1_poll(&s, i * 1000u, &pkt));
    }
    /* then nothing, however long one waits */
    for (uint32_t now = 3001; now <= 100000; now += 7) {
        CHECK(!sim_node1_poll(&s, now, &pkt));
    }
    CHECK_EQ_INT(s.sent, 3);
}

/* ---- BMP280 ---- */

static const bmp280_calib_t k_calib = {
    27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000,
};

static void test_bmp280_datasheet_example(void)
{
    int32_t t_fine = 0;
    CHECK_EQ_INT(bmp280_compensate_t(&k_calib, 519888, &t_fine), 2508); /* 25.08 degC */
    CHECK_EQ_INT(t_fine, 128422);
    /* 64-bit formula, evaluated exactly as written in the datasheet:
     * 25767233 / 256 = 100653.25 Pa (the datasheet's floating-point example
     * gives 100653.27 Pa). */
    uint32_t q = bmp280_compensate_p64(&k_calib, 415148, t_fine);
    CHECK_EQ_INT(q, 25767233);
    CHECK_EQ_INT(q / 256u, 100653);
    /* The coarser 32-bit formula, also evaluated as written: 100656 Pa. */
    CHECK_EQ_INT(bmp280_compensate_p32(&k_calib, 415148, t_fine), 100656);

    bmp280_measurement_t m;
    CHECK_EQ_INT(bmp280_compensate(&k_calib, 519888, 415148, &m), BMP280_OK);
    CHECK_EQ_INT(m.temperature_centi, 2508);
    CHECK_EQ_INT(m.pressure_pa, 100653);

    /* 0x80000 = no measurement (sensor in sleep mode): never "5242.88 hPa" */
    CHECK_EQ_INT(bmp280_compensate(&k_calib, 519888, BMP280_RAW_NO_MEASUREMENT, &m),
                 BMP280_NO_MEASUREMENT);
    CHECK_EQ_INT(bmp280_compensate(&k_calib, BMP280_RAW_NO_MEASUREMENT, 415148, &m),
                 BMP280_NO_MEASUREMENT);

    /* a zero dig_P1 must not divide by zero */
    bmp280_calib_t zero = k_calib;
    zero.dig_P1 = 0;
    CHECK_EQ_INT(bmp280_compensate_p64(&zero, 415148, t_fine), 0);
    CHECK_EQ_INT(bmp280_compensate_p32(&zero, 415148, t_fine), 0);
}

static void test_bmp280_parse(void)
{
    uint8_t raw[BMP280_CALIB_LEN];
    const uint16_t v[12] = {27504, (uint16_t)26435, (uint16_t)-1000, 36477, (uint16_t)-10685,
                            3024, 2855, 140, (uint16_t)-7, 15500, (uint16_t)-14600, 6000};
    for (int i = 0; i < 12; i++) {
        raw[2 * i] = (uint8_t)v[i];
        raw[2 * i + 1] = (uint8_t)(v[i] >> 8);
    }
    bmp280_calib_t c;
    bmp280_parse_calib(raw, &c);
    CHECK(memcmp(&c, &k_calib, sizeof c) == 0);

    const uint8_t data[6] = {0x65, 0x5A, 0xC0, 0x7E, 0xED, 0x00};
    int32_t p, t;
    bmp280_unpack_raw(data, &p, &t);
    CHECK_EQ_INT(p, 415148);
    CHECK_EQ_INT(t, 519888);
}

static void test_bmp280_driver(void)
{
    sim_bmp280_t sim;
    sim_bmp280_init(&sim, 42);
    bmp280_bus_t bus = {sim_bmp280_read, sim_bmp280_write, &sim};
    bmp280_t dev;
    bmp280_measurement_t m;

    /* a sensor left in sleep mode reads 0x80000 */
    int32_t t, p;
    uint8_t d[6];
    sim_bmp280_read(&sim, BMP280_REG_PRESS_MSB, d, 6);
    bmp280_unpack_raw(d, &p, &t);
    CHECK_EQ_INT(p, BMP280_RAW_NO_MEASUREMENT);
    CHECK_EQ_INT(t, BMP280_RAW_NO_MEASUREMENT);

    CHECK_EQ_INT(bmp280_init(&dev, &bus), BMP280_OK);
    CHECK(memcmp(&dev.calib, &k_calib, sizeof k_calib) == 0);
    CHECK_EQ_INT(sim.regs[BMP280_REG_CTRL_MEAS], BMP280_CTRL_MEAS_VALUE);
    CHECK_EQ_INT(sim.regs[BMP280_REG_CTRL_MEAS] & 3, 3); /* normal mode */

    int ok = 0, none = 0;
    for (int i = 0; i < 200; i++) {
        bmp280_status_t st = bmp280_read(&dev, &m);
        if (st == BMP280_OK) {
            ok++;
            CHECK(m.temperature_centi > 2000 && m.temperature_centi < 3000);
            CHECK(m.pressure_pa > 95000 && m.pressure_pa < 105000);
        } else {
            CHECK_EQ_INT(st, BMP280_NO_MEASUREMENT);
            none++;
        }
    }
    /* the model browns out every SIM_BMP280_RESET_EVERY reads; the driver
     * puts it back in normal mode and the next read has a value again */
    CHECK_EQ_INT(none, 200 / SIM_BMP280_RESET_EVERY);
    CHECK_EQ_INT(ok, 200 - none);

    /* wrong chip id */
    sim.regs[BMP280_REG_ID] = 0x60;
    CHECK_EQ_INT(bmp280_init(&dev, &bus), BMP280_ERR_CHIP_ID);
    CHECK_EQ_INT(bmp280_read(&dev, &m), BMP280_ERR_NOT_INIT);
}

/* ---- telemetry ---- */

static telemetry_t example(void)
{
    telemetry_t t = {
        .seq = 42, .uptime_ms = 420113,
        .has_node1 = true, .node1_temperature_centi = 2670, .node1_humidity_centi = 5540,
        .node1_gas_resistance = 101169,
        .has_node2 = true, .node2_temperature_centi = 2430, .node2_pressure_pa = 101325,
        .has_signal = true, .rssi = -33, .snr = 13,
        .packets_received = 42, .crc_errors = 0,
    };
    return t;
}

static void test_fmt_centi(void)
{
    char b[32];
    struct { int64_t v; const char *s; } cases[] = {
        {0, "0.00"}, {5, "0.05"}, {-5, "-0.05"}, {-100, "-1.00"}, {-99, "-0.99"},
        {2670, "26.70"}, {-2671, "-26.71"}, {101325, "1013.25"},
        {INT32_MIN, "-21474836.48"}, {INT64_MIN, "-92233720368547758.08"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK_EQ_INT(telemetry_fmt_centi(b, sizeof b, cases[i].v), strlen(cases[i].s));
        CHECK_EQ_STR(b, cases[i].s);
    }
    CHECK_EQ_INT(telemetry_fmt_centi(b, 5, -505), 0); /* "-5.05" needs 6 bytes */
    CHECK_EQ_STR(b, "");
    CHECK_EQ_INT(telemetry_fmt_centi(b, 6, -505), 5);
}

static void test_telemetry_format(void)
{
    char b[TELEMETRY_LINE_MAX];
    telemetry_t t = example();

    size_t n = telemetry_format(&t, b, sizeof b);
    const char *full =
        "{\"v\":1,\"seq\":42,\"uptime_ms\":420113,"
        "\"node1\":{\"temperature\":26.70,\"humidity\":55.40,\"gas_resistance\":101169},"
        "\"node2\":{\"temperature\":24.30,\"pressure\":1013.25},"
        "\"signal\":{\"rssi\":-33,\"snr\":13},"
        "\"stats\":{\"packets_received\":42,\"crc_errors\":0}}\n";
    CHECK_EQ_STR(b, full);
    CHECK_EQ_INT(n, strlen(full));

    /* bad frame: no node1 */
    t.has_node1 = false;
    telemetry_format(&t, b, sizeof b);
    CHECK(strstr(b, "node1") == NULL);
    CHECK(strstr(b, "\"node2\":{") != NULL);
    /* no BMP280 measurement: no node2 */
    t = example();
    t.has_node2 = false;
    telemetry_format(&t, b, sizeof b);
    CHECK(strstr(b, "node2") == NULL);
    CHECK(strstr(b, "\"node1\":{") != NULL);

    /* negatives below one degree */
    t = example();
    t.node1_temperature_centi = -5;
    t.node2_temperature_centi = -100;
    t.rssi = -137;
    t.snr = -7;
    telemetry_format(&t, b, sizeof b);
    CHECK(strstr(b, "\"node1\":{\"temperature\":-0.05,") != NULL);
    CHECK(strstr(b, "\"node2\":{\"temperature\":-1.00,") != NULL);
    CHECK(strstr(b, "\"signal\":{\"rssi\":-137,\"snr\":-7}") != NULL);

    /* every field at its extreme still fits TELEMETRY_LINE_MAX */
    telemetry_t big = {
        UINT32_MAX, UINT32_MAX, true, INT32_MIN, UINT32_MAX, UINT32_MAX,
        true, INT32_MIN, UINT32_MAX, true, INT32_MIN, INT32_MIN, UINT32_MAX, UINT32_MAX,
    };
    n = telemetry_format(&big, b, sizeof b);
    CHECK(n > 0 && n < sizeof b);
    CHECK(strstr(b, "\"node2\":{\"temperature\":-21474836.48,\"pressure\":42949672.95}") != NULL);
    CHECK(strstr(b, "\"rssi\":-2147483648") != NULL);

    /* truncation: every buffer size gives either a complete valid line
     * (ending in "}\n", NUL-terminated, within cap) or nothing */
    t = example();
    const char *stats_only =
        "{\"v\":1,\"seq\":42,\"uptime_ms\":420113,"
        "\"stats\":{\"packets_received\":42,\"crc_errors\":0}}\n";
    const char *minimal = "{\"v\":1,\"seq\":42}\n";
    for (size_t cap = 0; cap <= strlen(full) + 1; cap++) {
        char small[TELEMETRY_LINE_MAX + 8];
        memset(small, '#', sizeof small);
        n = telemetry_format(&t, small, cap);
        CHECK(small[cap] == '#'); /* nothing written past cap */
        if (cap == 0) {
            CHECK_EQ_INT(n, 0);
            continue;
        }
        CHECK(n < cap);
        CHECK_EQ_INT(strlen(small), n);
        if (cap > strlen(full)) {
            CHECK_EQ_STR(small, full);
        } else if (cap > strlen(stats_only)) {
            CHECK_EQ_STR(small, stats_only);
        } else if (cap > strlen(minimal)) {
            CHECK_EQ_STR(small, minimal);
        } else {
            CHECK_EQ_INT(n, 0);
        }
    }
    CHECK_EQ_INT(telemetry_format(NULL, b, sizeof b), 0);
    CHECK_EQ_INT(telemetry_format(&t, NULL, 10), 0);
}

/* ---- heartbeat ---- */

static void test_heartbeat_timer(void)
{
    heartbeat_t h;
    CHECK_EQ_INT(HEARTBEAT_S, 30); /* the default */

    /* silence from reset: the first heartbeat one period after start */
    heartbeat_init(&h, 30000, 0);
    CHECK(!heartbeat_due(&h, 0));
    CHECK(!heartbeat_due(&h, 29999));
    CHECK(heartbeat_due(&h, 30000));
    CHECK(heartbeat_due(&h, 45000)); /* due until a line goes out */
    heartbeat_line_written(&h, 30000);
    CHECK(!heartbeat_due(&h, 30000));
    CHECK(!heartbeat_due(&h, 59999));
    CHECK(heartbeat_due(&h, 60000));
    /* a packet's line restarts the silence */
    heartbeat_line_written(&h, 50000);
    CHECK(!heartbeat_due(&h, 60000));
    CHECK(!heartbeat_due(&h, 79999));
    CHECK(heartbeat_due(&h, 80000));

    /* the millisecond clock wraps (after 49.7 days) */
    heartbeat_init(&h, 30000, UINT32_MAX - 999u);
    CHECK(!heartbeat_due(&h, UINT32_MAX));
    CHECK(!heartbeat_due(&h, 0));
    CHECK(!heartbeat_due(&h, 28999));
    CHECK(heartbeat_due(&h, 29000));

    /* period 0: no heartbeats at all */
    heartbeat_init(&h, 0, 0);
    CHECK(!heartbeat_due(&h, 0));
    CHECK(!heartbeat_due(&h, 30000));
    CHECK(!heartbeat_due(&h, UINT32_MAX));
}

/* The application's loop, one step per millisecond from 0 to end_ms: a line
 * for each frame (at the times in frames[], ascending), otherwise a heartbeat
 * line when one is due. Returns the number of heartbeats, their times in
 * beats[] (at most max of them). */
static size_t run_loop(uint32_t period_ms, const uint32_t *frames, size_t n_frames,
                       uint32_t end_ms, uint32_t *beats, size_t max)
{
    heartbeat_t h;
    heartbeat_init(&h, period_ms, 0);
    size_t f = 0, n = 0;
    for (uint32_t now = 0; now <= end_ms; now++) {
        if (f < n_frames && frames[f] == now) {
            f++;
            heartbeat_line_written(&h, now);
        } else if (heartbeat_due(&h, now)) {
            if (n < max) {
                beats[n] = now;
            }
            n++;
            heartbeat_line_written(&h, now);
        }
    }
    return n;
}

static void test_heartbeat_loop(void)
{
    uint32_t frames[200];
    uint32_t beats[16];

    /* no frame at all: one heartbeat per period */
    CHECK_EQ_INT(run_loop(30000, NULL, 0, 95000, beats, 16), 3);
    CHECK_EQ_INT(beats[0], 30000);
    CHECK_EQ_INT(beats[1], 60000);
    CHECK_EQ_INT(beats[2], 90000);

    /* a frame every second: never a heartbeat */
    for (size_t i = 0; i < 200; i++) {
        frames[i] = (uint32_t)(i + 1) * 1000u;
    }
    CHECK_EQ_INT(run_loop(30000, frames, 200, 200000, beats, 16), 0);

    /* frames just often enough: still none */
    for (size_t i = 0; i < 10; i++) {
        frames[i] = (uint32_t)(i + 1) * 29999u;
    }
    CHECK_EQ_INT(run_loop(30000, frames, 10, 299990, beats, 16), 0);

    /* eight frames, then the radio goes quiet: heartbeats a period after
     * the last frame and every period after that */
    for (size_t i = 0; i < 8; i++) {
        frames[i] = (uint32_t)(i + 1) * 1000u;
    }
    CHECK_EQ_INT(run_loop(30000, frames, 8, 100000, beats, 16), 3);
    CHECK_EQ_INT(beats[0], 38000);
    CHECK_EQ_INT(beats[1], 68000);
    CHECK_EQ_INT(beats[2], 98000);

    /* a frame in the middle of a silence restarts the timer */
    frames[0] = 1000;
    frames[1] = 70000;
    CHECK_EQ_INT(run_loop(30000, frames, 2, 129999, beats, 16), 3);
    CHECK_EQ_INT(beats[0], 31000);
    CHECK_EQ_INT(beats[1], 61000);
    CHECK_EQ_INT(beats[2], 100000);

    /* a short period, as in the quiet test build */
    CHECK_EQ_INT(run_loop(2000, frames, 1, 9000, beats, 16), 4);
    CHECK_EQ_INT(beats[0], 3000);
    CHECK_EQ_INT(beats[3], 9000);
}

static void test_heartbeat_line(void)
{
    char b[TELEMETRY_LINE_MAX];
    /* a heartbeat: Node 2's reading and stats, no node1, no signal */
    telemetry_t t = example();
    t.seq = 43;
    t.uptime_ms = 450113;
    t.has_node1 = false;
    t.has_signal = false;
    size_t n = telemetry_format(&t, b, sizeof b);
    const char *beat =
        "{\"v\":1,\"seq\":43,\"uptime_ms\":450113,"
        "\"node2\":{\"temperature\":24.30,\"pressure\":1013.25},"
        "\"stats\":{\"packets_received\":42,\"crc_errors\":0}}\n";
    CHECK_EQ_STR(b, beat);
    CHECK_EQ_INT(n, strlen(beat));
    /* and without a BMP280 measurement, still a line with the stats */
    t.has_node2 = false;
    telemetry_format(&t, b, sizeof b);
    CHECK_EQ_STR(b, "{\"v\":1,\"seq\":43,\"uptime_ms\":450113,"
                    "\"stats\":{\"packets_received\":42,\"crc_errors\":0}}\n");
}

int main(void)
{
    test_crc();
    test_frame_roundtrip();
    test_frame_corruption();
    test_sim_node1();
    test_sim_node1_goes_quiet();
    test_bmp280_datasheet_example();
    test_bmp280_parse();
    test_bmp280_driver();
    test_fmt_centi();
    test_telemetry_format();
    test_heartbeat_timer();
    test_heartbeat_loop();
    test_heartbeat_line();
    if (g_failures != 0) {
        fprintf(stderr, "FAILED: %d of %d checks\n", g_failures, g_checks);
        return 1;
    }
    printf("unit tests: all %d checks passed\n", g_checks);
    return 0;
}
