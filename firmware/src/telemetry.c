#include "telemetry.h"

typedef struct {
    char *buf;
    size_t cap;   /* usable bytes, excluding the final NUL */
    size_t len;
    bool overflow;
} writer_t;

static void w_char(writer_t *w, char c)
{
    if (w->len < w->cap) {
        w->buf[w->len++] = c;
    } else {
        w->overflow = true;
    }
}

static void w_str(writer_t *w, const char *s)
{
    while (*s != '\0') {
        w_char(w, *s++);
    }
}

static void w_u64(writer_t *w, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + (v % 10u));
        v /= 10u;
    } while (v != 0u);
    while (n > 0) {
        w_char(w, tmp[--n]);
    }
}

static void w_i64(writer_t *w, int64_t v)
{
    if (v < 0) {
        w_char(w, '-');
        w_u64(w, (uint64_t)0 - (uint64_t)v);
    } else {
        w_u64(w, (uint64_t)v);
    }
}

static void w_centi(writer_t *w, int64_t centi)
{
    uint64_t mag;
    if (centi < 0) {
        w_char(w, '-');
        mag = (uint64_t)0 - (uint64_t)centi;
    } else {
        mag = (uint64_t)centi;
    }
    w_u64(w, mag / 100u);
    w_char(w, '.');
    uint64_t frac = mag % 100u;
    w_char(w, (char)('0' + frac / 10u));
    w_char(w, (char)('0' + frac % 10u));
}

size_t telemetry_fmt_centi(char *buf, size_t cap, int64_t centi)
{
    if (buf == NULL || cap == 0) {
        return 0;
    }
    writer_t w = {buf, cap - 1u, 0, false};
    w_centi(&w, centi);
    if (w.overflow) {
        buf[0] = '\0';
        return 0;
    }
    buf[w.len] = '\0';
    return w.len;
}

enum { LEVEL_FULL = 0, LEVEL_STATS = 1, LEVEL_MINIMAL = 2 };

static void render(writer_t *w, const telemetry_t *t, int level)
{
    w_str(w, "{\"v\":1,\"seq\":");
    w_u64(w, t->seq);
    if (level <= LEVEL_STATS) {
        w_str(w, ",\"uptime_ms\":");
        w_u64(w, t->uptime_ms);
    }
    if (level == LEVEL_FULL) {
        if (t->has_node1) {
            w_str(w, ",\"node1\":{\"temperature\":");
            w_centi(w, t->node1_temperature_centi);
            w_str(w, ",\"humidity\":");
            w_centi(w, t->node1_humidity_centi);
            w_str(w, ",\"gas_resistance\":");
            w_u64(w, t->node1_gas_resistance);
            w_char(w, '}');
        }
        if (t->has_node2) {
            w_str(w, ",\"node2\":{\"temperature\":");
            w_centi(w, t->node2_temperature_centi);
            w_str(w, ",\"pressure\":");
            w_centi(w, t->node2_pressure_pa); /* Pa == centi-hPa */
            w_char(w, '}');
        }
        if (t->has_signal) {
            w_str(w, ",\"signal\":{\"rssi\":");
            w_i64(w, t->rssi);
            w_str(w, ",\"snr\":");
            w_i64(w, t->snr);
            w_char(w, '}');
        }
    }
    if (level <= LEVEL_STATS) {
        w_str(w, ",\"stats\":{\"packets_received\":");
        w_u64(w, t->packets_received);
        w_str(w, ",\"crc_errors\":");
        w_u64(w, t->crc_errors);
        w_char(w, '}');
    }
    w_str(w, "}\n");
}

size_t telemetry_format(const telemetry_t *t, char *buf, size_t cap)
{
    if (buf == NULL || cap == 0) {
        return 0;
    }
    if (t != NULL) {
        for (int level = LEVEL_FULL; level <= LEVEL_MINIMAL; level++) {
            writer_t w = {buf, cap - 1u, 0, false};
            render(&w, t, level);
            if (!w.overflow) {
                buf[w.len] = '\0';
                return w.len;
            }
        }
    }
    buf[0] = '\0';
    return 0;
}
