/* STM32F4 USART (same register layout on F405 and F446), polled TX. */
#ifndef NODE2_UART_H
#define NODE2_UART_H

#include <stddef.h>
#include <stdint.h>

#define USART1_BASE 0x40011000u
#define USART2_BASE 0x40004400u

/* pclk_hz: clock of the APB bus the USART sits on. 8N1, TX and RX on. */
void uart_init(uint32_t base, uint32_t pclk_hz, uint32_t baud);
void uart_write(uint32_t base, const char *data, size_t len);

#endif
