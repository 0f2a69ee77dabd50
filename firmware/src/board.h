/* Board interface: everything the application needs from the hardware (or
 * from a simulation of it). One implementation per board. */
#ifndef NODE2_BOARD_H
#define NODE2_BOARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bmp280.h"
#include "radio.h"

/* Clocks, pins, UART, RTT, I2C, radio, SysTick. */
void board_init(void);

/* Writes one complete line (including its '\n') to every output of the board
 * (UART and RTT on the Nucleo, USART1 on the emulated board). */
void board_write_line(const char *line, size_t len);

/* Non-blocking: true and *pkt filled when a packet was received. */
bool board_radio_receive(radio_packet_t *pkt);

/* Register access to the BMP280 (I2C on the Nucleo, a model in simulation). */
const bmp280_bus_t *board_bmp280_bus(void);

/* Milliseconds since board_init (SysTick). */
uint32_t board_millis(void);

/* Sleeps until the next interrupt (at most one SysTick period). */
void board_wait_event(void);

/* Ends the program where that makes sense (semihosting in the emulator, exit()
 * on the host); on hardware it parks the CPU. */
void board_exit(int code) __attribute__((noreturn));

#endif
