/* BMP280 driver: register access through a small bus interface, and the
 * datasheet's integer compensation formulas. */
#ifndef NODE2_BMP280_H
#define NODE2_BMP280_H

#include <stddef.h>
#include <stdint.h>

#define BMP280_CHIP_ID 0x58u

#define BMP280_REG_CALIB 0x88u   /* 24 bytes: dig_T1 .. dig_P9 */
#define BMP280_REG_ID 0xD0u
#define BMP280_REG_RESET 0xE0u
#define BMP280_REG_STATUS 0xF3u
#define BMP280_REG_CTRL_MEAS 0xF4u
#define BMP280_REG_CONFIG 0xF5u
#define BMP280_REG_PRESS_MSB 0xF7u /* 6 bytes: press msb/lsb/xlsb, temp msb/lsb/xlsb */

#define BMP280_CALIB_LEN 24u

/* ctrl_meas: osrs_t x2, osrs_p x16, normal mode. */
#define BMP280_OSRS_T_X2 (2u << 5)
#define BMP280_OSRS_P_X16 (5u << 2)
#define BMP280_MODE_MASK 0x03u
#define BMP280_MODE_NORMAL 0x03u
#define BMP280_CTRL_MEAS_VALUE (BMP280_OSRS_T_X2 | BMP280_OSRS_P_X16 | BMP280_MODE_NORMAL)
/* config: standby 125 ms, IIR filter x4. */
#define BMP280_CONFIG_VALUE ((2u << 5) | (2u << 2))

/* Value of the 20-bit data registers when nothing was measured (sensor in
 * sleep mode, or a skipped measurement). */
#define BMP280_RAW_NO_MEASUREMENT 0x80000

typedef struct {
    uint16_t dig_T1;
    int16_t dig_T2;
    int16_t dig_T3;
    uint16_t dig_P1;
    int16_t dig_P2;
    int16_t dig_P3;
    int16_t dig_P4;
    int16_t dig_P5;
    int16_t dig_P6;
    int16_t dig_P7;
    int16_t dig_P8;
    int16_t dig_P9;
} bmp280_calib_t;

/* Bus access; both return 0 on success. */
typedef struct {
    int (*read)(void *ctx, uint8_t reg, uint8_t *buf, size_t len);
    int (*write)(void *ctx, uint8_t reg, uint8_t value);
    void *ctx;
} bmp280_bus_t;

typedef struct {
    const bmp280_bus_t *bus;
    bmp280_calib_t calib;
    int initialised;
} bmp280_t;

typedef enum {
    BMP280_OK = 0,
    BMP280_NO_MEASUREMENT = 1,  /* raw 0x80000: no value to report */
    BMP280_ERR_BUS = -1,
    BMP280_ERR_CHIP_ID = -2,
    BMP280_ERR_NOT_INIT = -3,
} bmp280_status_t;

typedef struct {
    int32_t temperature_centi;  /* centi-degC */
    uint32_t pressure_pa;       /* Pa (integer part of the Q24.8 result) */
} bmp280_measurement_t;

/* Pure functions (host-testable). */
void bmp280_parse_calib(const uint8_t raw[BMP280_CALIB_LEN], bmp280_calib_t *calib);
int32_t bmp280_compensate_t(const bmp280_calib_t *calib, int32_t adc_t, int32_t *t_fine);
/* 64-bit formula: Pa in Q24.8 (value / 256 = Pa). */
uint32_t bmp280_compensate_p64(const bmp280_calib_t *calib, int32_t adc_p, int32_t t_fine);
/* 32-bit formula: Pa. */
uint32_t bmp280_compensate_p32(const bmp280_calib_t *calib, int32_t adc_p, int32_t t_fine);
void bmp280_unpack_raw(const uint8_t data[6], int32_t *adc_p, int32_t *adc_t);
/* Raw values -> measurement; BMP280_NO_MEASUREMENT for 0x80000 in either. */
bmp280_status_t bmp280_compensate(const bmp280_calib_t *calib, int32_t adc_t, int32_t adc_p,
                                  bmp280_measurement_t *out);

/* Device functions. init checks the chip id, reads the calibration and puts
 * the sensor in normal mode. */
bmp280_status_t bmp280_init(bmp280_t *dev, const bmp280_bus_t *bus);
bmp280_status_t bmp280_read_raw(bmp280_t *dev, int32_t *adc_t, int32_t *adc_p);
bmp280_status_t bmp280_read(bmp280_t *dev, bmp280_measurement_t *out);

#endif
