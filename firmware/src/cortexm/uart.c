#include "uart.h"

#include "cortexm.h"

#define USART_SR(b) REG32((b) + 0x00u)
#define USART_DR(b) REG32((b) + 0x04u)
#define USART_BRR(b) REG32((b) + 0x08u)
#define USART_CR1(b) REG32((b) + 0x0Cu)
#define USART_CR2(b) REG32((b) + 0x10u)
#define USART_CR3(b) REG32((b) + 0x14u)

#define USART_SR_TXE (1u << 7)
#define USART_SR_TC (1u << 6)
#define USART_CR1_UE (1u << 13)
#define USART_CR1_TE (1u << 3)
#define USART_CR1_RE (1u << 2)

void uart_init(uint32_t base, uint32_t pclk_hz, uint32_t baud)
{
    USART_CR1(base) = 0;
    USART_CR2(base) = 0;
    USART_CR3(base) = 0;
    /* oversampling by 16: USARTDIV = pclk / baud, rounded */
    USART_BRR(base) = (pclk_hz + baud / 2u) / baud;
    USART_CR1(base) = USART_CR1_UE | USART_CR1_TE | USART_CR1_RE;
}

void uart_write(uint32_t base, const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        /* bounded wait: a stuck peripheral must not hang the node */
        for (uint32_t spin = 0; spin < 1000000u; spin++) {
            if (USART_SR(base) & USART_SR_TXE) {
                break;
            }
        }
        USART_DR(base) = (uint8_t)data[i];
    }
}
