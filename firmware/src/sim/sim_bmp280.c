#include "sim_bmp280.h"

/* Datasheet example calibration (dig_T1 .. dig_P9). */
static const uint16_t k_calib[12] = {
    27504u, (uint16_t)26435, (uint16_t)-1000, 36477u, (uint16_t)-10685, (uint16_t)3024,
    (uint16_t)2855, (uint16_t)140, (uint16_t)-7, (uint16_t)15500, (uint16_t)-14600,
    (uint16_t)6000,
};

static uint32_t next_rand(uint32_t *state)
{
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    return x;
}

static int32_t walk(uint32_t *rng, int32_t v, int32_t step, int32_t lo, int32_t hi)
{
    v += (int32_t)(next_rand(rng) % (uint32_t)(2 * step + 1)) - step;
    if (v < lo) {
        v = lo + (lo - v);
    }
    if (v > hi) {
        v = hi - (v - hi);
    }
    return v;
}

static void power_on_reset(sim_bmp280_t *s)
{
    for (unsigned i = 0; i < sizeof s->regs; i++) {
        s->regs[i] = 0;
    }
    for (unsigned i = 0; i < 12u; i++) {
        s->regs[BMP280_REG_CALIB + 2u * i] = (uint8_t)(k_calib[i] & 0xFFu);
        s->regs[BMP280_REG_CALIB + 2u * i + 1u] = (uint8_t)(k_calib[i] >> 8);
    }
    s->regs[BMP280_REG_ID] = BMP280_CHIP_ID;
    /* data registers after reset: 0x80000 for pressure and temperature */
    s->regs[0xF7] = 0x80;
    s->regs[0xFA] = 0x80;
}

void sim_bmp280_init(sim_bmp280_t *s, uint32_t seed)
{
    s->rng = seed != 0u ? seed : 0x9E3779B9u;
    s->reads = 0;
    s->adc_t = 519888;
    s->adc_p = 415148;
    power_on_reset(s);
}

static void measure(sim_bmp280_t *s)
{
    /* about +-2.5 degC and +-12 hPa around the datasheet example */
    s->adc_t = walk(&s->rng, s->adc_t, 150, 519888 - 8000, 519888 + 8000);
    s->adc_p = walk(&s->rng, s->adc_p, 60, 415148 - 3000, 415148 + 3000);
    s->regs[0xF7] = (uint8_t)(s->adc_p >> 12);
    s->regs[0xF8] = (uint8_t)(s->adc_p >> 4);
    s->regs[0xF9] = (uint8_t)((s->adc_p & 0xF) << 4);
    s->regs[0xFA] = (uint8_t)(s->adc_t >> 12);
    s->regs[0xFB] = (uint8_t)(s->adc_t >> 4);
    s->regs[0xFC] = (uint8_t)((s->adc_t & 0xF) << 4);
}

int sim_bmp280_read(void *ctx, uint8_t reg, uint8_t *buf, size_t len)
{
    sim_bmp280_t *s = ctx;
    if ((size_t)reg + len > sizeof s->regs) {
        return -1;
    }
    if (reg <= BMP280_REG_PRESS_MSB + 5u && (size_t)reg + len > BMP280_REG_PRESS_MSB) {
        s->reads++;
        if (s->reads % SIM_BMP280_RESET_EVERY == 0u) {
            power_on_reset(s); /* brown-out: back to sleep, data 0x80000 */
        } else if ((s->regs[BMP280_REG_CTRL_MEAS] & BMP280_MODE_MASK) == BMP280_MODE_NORMAL) {
            measure(s);
        }
    }
    for (size_t i = 0; i < len; i++) {
        buf[i] = s->regs[reg + i];
    }
    return 0;
}

int sim_bmp280_write(void *ctx, uint8_t reg, uint8_t value)
{
    sim_bmp280_t *s = ctx;
    if (reg == BMP280_REG_RESET) {
        if (value == 0xB6u) {
            power_on_reset(s);
        }
        return 0;
    }
    if (reg == BMP280_REG_CTRL_MEAS || reg == BMP280_REG_CONFIG) {
        s->regs[reg] = value;
        return 0;
    }
    return -1; /* read-only register */
}
