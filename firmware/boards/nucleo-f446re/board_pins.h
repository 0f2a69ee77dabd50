/* Nucleo-F446RE pin choice (Arduino header names in brackets); see the
 * wiring table in README.md. */
#ifndef NODE2_BOARD_PINS_H
#define NODE2_BOARD_PINS_H

#include "stm32f446.h"

/* USART2 to the ST-LINK virtual COM port: PA2 TX, PA3 RX (AF7) */
#define UART_TX_PORT GPIOA_BASE
#define UART_TX_PIN 2u
#define UART_RX_PORT GPIOA_BASE
#define UART_RX_PIN 3u
#define UART_AF 7u

/* I2C1 to the BMP280: PB8 SCL [D15], PB9 SDA [D14] (AF4, open drain) */
#define I2C_SCL_PORT GPIOB_BASE
#define I2C_SCL_PIN 8u
#define I2C_SDA_PORT GPIOB_BASE
#define I2C_SDA_PIN 9u
#define I2C_AF 4u
#define BMP280_I2C_ADDR 0x76u /* SDO to GND; 0x77 with SDO to VDDIO */

/* SPI1 to the RFM95W: PA5 SCK [D13], PA6 MISO [D12], PA7 MOSI [D11] (AF5) */
#define SPI_SCK_PORT GPIOA_BASE
#define SPI_SCK_PIN 5u
#define SPI_MISO_PORT GPIOA_BASE
#define SPI_MISO_PIN 6u
#define SPI_MOSI_PORT GPIOA_BASE
#define SPI_MOSI_PIN 7u
#define SPI_AF 5u

/* RFM95W control: NSS PB6 [D10], RESET PC7 [D9], DIO0 PA10 [D2] */
#define RADIO_NSS_PORT GPIOB_BASE
#define RADIO_NSS_PIN 6u
#define RADIO_RESET_PORT GPIOC_BASE
#define RADIO_RESET_PIN 7u
#define RADIO_DIO0_PORT GPIOA_BASE
#define RADIO_DIO0_PIN 10u

#endif
