/* Thin clock/GPIO/I2C/SPI drivers for the Nucleo-F446RE (polled). */
#ifndef NODE2_HW_H
#define NODE2_HW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SYSCLK_HZ 84000000u
#define APB1_HZ 42000000u
#define APB2_HZ 84000000u

typedef enum { GPIO_IN = 0, GPIO_OUT = 1, GPIO_AF = 2 } gpio_mode_t;
typedef enum { GPIO_NOPULL = 0, GPIO_PULLUP = 1, GPIO_PULLDOWN = 2 } gpio_pull_t;

void clock_init(void);  /* HSI 16 MHz -> PLL -> 84 MHz; APB1 42, APB2 84 */
void gpio_config(uint32_t port, unsigned pin, gpio_mode_t mode, gpio_pull_t pull,
                 bool open_drain, unsigned af);
void gpio_write(uint32_t port, unsigned pin, bool high);
bool gpio_read(uint32_t port, unsigned pin);

void i2c1_init(void);   /* 100 kHz */
/* Return 0 on success, -1 on NACK/bus error/timeout. */
int i2c1_write_reg(uint8_t addr7, uint8_t reg, uint8_t value);
int i2c1_read_regs(uint8_t addr7, uint8_t reg, uint8_t *buf, size_t len);

void spi1_init(void);   /* mode 0, 5.25 MHz, software NSS */
uint8_t spi1_transfer(uint8_t out);

void delay_ms(uint32_t ms);

#endif
