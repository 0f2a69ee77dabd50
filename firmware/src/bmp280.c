#include "bmp280.h"

static uint16_t le_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | ((uint16_t)p[1] << 8));
}

void bmp280_parse_calib(const uint8_t raw[BMP280_CALIB_LEN], bmp280_calib_t *c)
{
    c->dig_T1 = le_u16(&raw[0]);
    c->dig_T2 = (int16_t)le_u16(&raw[2]);
    c->dig_T3 = (int16_t)le_u16(&raw[4]);
    c->dig_P1 = le_u16(&raw[6]);
    c->dig_P2 = (int16_t)le_u16(&raw[8]);
    c->dig_P3 = (int16_t)le_u16(&raw[10]);
    c->dig_P4 = (int16_t)le_u16(&raw[12]);
    c->dig_P5 = (int16_t)le_u16(&raw[14]);
    c->dig_P6 = (int16_t)le_u16(&raw[16]);
    c->dig_P7 = (int16_t)le_u16(&raw[18]);
    c->dig_P8 = (int16_t)le_u16(&raw[20]);
    c->dig_P9 = (int16_t)le_u16(&raw[22]);
}

/* Datasheet formulas. Left shifts of possibly negative values are written as
 * multiplications (same result, no undefined behaviour); right shifts of
 * negative values are arithmetic with GCC and Clang, as the datasheet assumes. */

int32_t bmp280_compensate_t(const bmp280_calib_t *c, int32_t adc_t, int32_t *t_fine)
{
    int32_t var1 = ((((adc_t >> 3) - ((int32_t)c->dig_T1 * 2))) * ((int32_t)c->dig_T2)) >> 11;
    int32_t d = (adc_t >> 4) - (int32_t)c->dig_T1;
    int32_t var2 = (((d * d) >> 12) * ((int32_t)c->dig_T3)) >> 14;
    int32_t tf = var1 + var2;
    if (t_fine != NULL) {
        *t_fine = tf;
    }
    return (tf * 5 + 128) >> 8;
}

uint32_t bmp280_compensate_p64(const bmp280_calib_t *c, int32_t adc_p, int32_t t_fine)
{
    int64_t var1 = (int64_t)t_fine - 128000;
    int64_t var2 = var1 * var1 * (int64_t)c->dig_P6;
    var2 = var2 + ((var1 * (int64_t)c->dig_P5) * ((int64_t)1 << 17));
    var2 = var2 + ((int64_t)c->dig_P4 * ((int64_t)1 << 35));
    var1 = ((var1 * var1 * (int64_t)c->dig_P3) >> 8) +
           ((var1 * (int64_t)c->dig_P2) * ((int64_t)1 << 12));
    var1 = ((((int64_t)1 << 47) + var1) * (int64_t)c->dig_P1) >> 33;
    if (var1 == 0) {
        return 0; /* avoid division by zero */
    }
    int64_t p = 1048576 - (int64_t)adc_p;
    p = ((p * ((int64_t)1 << 31)) - var2) * 3125 / var1;
    var1 = ((int64_t)c->dig_P9 * (p >> 13) * (p >> 13)) >> 25;
    var2 = ((int64_t)c->dig_P8 * p) >> 19;
    p = ((p + var1 + var2) >> 8) + ((int64_t)c->dig_P7 * 16);
    return (uint32_t)p;
}

uint32_t bmp280_compensate_p32(const bmp280_calib_t *c, int32_t adc_p, int32_t t_fine)
{
    int32_t var1 = (t_fine >> 1) - (int32_t)64000;
    int32_t var2 = (((var1 >> 2) * (var1 >> 2)) >> 11) * ((int32_t)c->dig_P6);
    var2 = var2 + ((var1 * ((int32_t)c->dig_P5)) * 2);
    var2 = (var2 >> 2) + ((int32_t)c->dig_P4 * 65536);
    var1 = ((((int32_t)c->dig_P3 * (((var1 >> 2) * (var1 >> 2)) >> 13)) >> 3) +
            ((((int32_t)c->dig_P2) * var1) >> 1)) >> 18;
    var1 = (((32768 + var1)) * ((int32_t)c->dig_P1)) >> 15;
    if (var1 == 0) {
        return 0;
    }
    uint32_t p = (((uint32_t)(((int32_t)1048576) - adc_p) - (uint32_t)(var2 >> 12))) * 3125u;
    if (p < 0x80000000u) {
        p = (p << 1) / ((uint32_t)var1);
    } else {
        p = (p / (uint32_t)var1) * 2u;
    }
    var1 = (((int32_t)c->dig_P9) * ((int32_t)(((p >> 3) * (p >> 3)) >> 13))) >> 12;
    var2 = (((int32_t)(p >> 2)) * ((int32_t)c->dig_P8)) >> 13;
    p = (uint32_t)((int32_t)p + ((var1 + var2 + c->dig_P7) >> 4));
    return p;
}

void bmp280_unpack_raw(const uint8_t d[6], int32_t *adc_p, int32_t *adc_t)
{
    *adc_p = (int32_t)(((uint32_t)d[0] << 12) | ((uint32_t)d[1] << 4) | ((uint32_t)d[2] >> 4));
    *adc_t = (int32_t)(((uint32_t)d[3] << 12) | ((uint32_t)d[4] << 4) | ((uint32_t)d[5] >> 4));
}

bmp280_status_t bmp280_compensate(const bmp280_calib_t *calib, int32_t adc_t, int32_t adc_p,
                                  bmp280_measurement_t *out)
{
    if (adc_t == BMP280_RAW_NO_MEASUREMENT || adc_p == BMP280_RAW_NO_MEASUREMENT) {
        return BMP280_NO_MEASUREMENT;
    }
    int32_t t_fine = 0;
    out->temperature_centi = bmp280_compensate_t(calib, adc_t, &t_fine);
    uint32_t q24_8 = bmp280_compensate_p64(calib, adc_p, t_fine);
    if (q24_8 == 0) {
        return BMP280_NO_MEASUREMENT; /* degenerate calibration */
    }
    out->pressure_pa = q24_8 / 256u;
    return BMP280_OK;
}

bmp280_status_t bmp280_init(bmp280_t *dev, const bmp280_bus_t *bus)
{
    uint8_t id = 0;
    uint8_t calib[BMP280_CALIB_LEN];

    dev->bus = bus;
    dev->initialised = 0;
    if (bus->read(bus->ctx, BMP280_REG_ID, &id, 1) != 0) {
        return BMP280_ERR_BUS;
    }
    if (id != BMP280_CHIP_ID) {
        return BMP280_ERR_CHIP_ID;
    }
    if (bus->read(bus->ctx, BMP280_REG_CALIB, calib, sizeof calib) != 0) {
        return BMP280_ERR_BUS;
    }
    bmp280_parse_calib(calib, &dev->calib);
    /* config is only reliably written in sleep mode: write it first. */
    if (bus->write(bus->ctx, BMP280_REG_CTRL_MEAS, 0x00) != 0 ||
        bus->write(bus->ctx, BMP280_REG_CONFIG, BMP280_CONFIG_VALUE) != 0 ||
        bus->write(bus->ctx, BMP280_REG_CTRL_MEAS, BMP280_CTRL_MEAS_VALUE) != 0) {
        return BMP280_ERR_BUS;
    }
    dev->initialised = 1;
    return BMP280_OK;
}

bmp280_status_t bmp280_read_raw(bmp280_t *dev, int32_t *adc_t, int32_t *adc_p)
{
    uint8_t data[6];
    if (!dev->initialised) {
        return BMP280_ERR_NOT_INIT;
    }
    if (dev->bus->read(dev->bus->ctx, BMP280_REG_PRESS_MSB, data, sizeof data) != 0) {
        return BMP280_ERR_BUS;
    }
    bmp280_unpack_raw(data, adc_p, adc_t);
    return BMP280_OK;
}

bmp280_status_t bmp280_read(bmp280_t *dev, bmp280_measurement_t *out)
{
    int32_t adc_t = 0;
    int32_t adc_p = 0;
    bmp280_status_t st = bmp280_read_raw(dev, &adc_t, &adc_p);
    if (st != BMP280_OK) {
        return st;
    }
    st = bmp280_compensate(&dev->calib, adc_t, adc_p, out);
    if (st == BMP280_NO_MEASUREMENT) {
        /* A sensor that was reset (brown-out) falls back to sleep mode:
         * put it back in normal mode so the next read has a value. */
        uint8_t ctrl = 0;
        if (dev->bus->read(dev->bus->ctx, BMP280_REG_CTRL_MEAS, &ctrl, 1) == 0 &&
            (ctrl & BMP280_MODE_MASK) != BMP280_MODE_NORMAL) {
            (void)dev->bus->write(dev->bus->ctx, BMP280_REG_CONFIG, BMP280_CONFIG_VALUE);
            (void)dev->bus->write(dev->bus->ctx, BMP280_REG_CTRL_MEAS, BMP280_CTRL_MEAS_VALUE);
        }
    }
    return st;
}
