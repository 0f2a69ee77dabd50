/* Register-level model of a BMP280 on the bus: chip id, the datasheet's
 * example calibration, ctrl_meas/config/reset, and drifting raw ADC values
 * around the datasheet example (adc_T=519888, adc_P=415148). Until the
 * driver selects normal mode the data registers read 0x80000 ("no
 * measurement"), as on the real part. Every SIM_BMP280_RESET_EVERY-th data
 * read the model simulates a brown-out reset (back to sleep mode). */
#ifndef NODE2_SIM_BMP280_H
#define NODE2_SIM_BMP280_H

#include <stdint.h>

#include "bmp280.h"

#define SIM_BMP280_RESET_EVERY 40u

typedef struct {
    uint8_t regs[256];
    uint32_t rng;
    uint32_t reads;
    int32_t adc_t;
    int32_t adc_p;
} sim_bmp280_t;

void sim_bmp280_init(sim_bmp280_t *s, uint32_t seed);
int sim_bmp280_read(void *ctx, uint8_t reg, uint8_t *buf, size_t len);
int sim_bmp280_write(void *ctx, uint8_t reg, uint8_t value);

#endif
