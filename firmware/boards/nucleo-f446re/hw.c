#include "hw.h"

#include "stm32f446.h"

#define SPIN_LIMIT 100000u /* bounded waits: a dead bus must not hang the node */

void clock_init(void)
{
    RCC_CR |= RCC_CR_HSION;
    while (!(RCC_CR & RCC_CR_HSIRDY)) {
    }
    RCC_APB1ENR |= RCC_APB1ENR_PWREN;
    /* 2 wait states for 60-90 MHz at 2.7-3.6 V */
    FLASH_ACR = FLASH_ACR_LATENCY_2WS | FLASH_ACR_PRFTEN | FLASH_ACR_ICEN | FLASH_ACR_DCEN;
    while ((FLASH_ACR & 0xFu) != FLASH_ACR_LATENCY_2WS) {
    }
    /* HSI 16 MHz / M=16 * N=336 / P=4 = 84 MHz; Q=7 (48 MHz); R=2; source HSI */
    RCC_PLLCFGR = 16u | (336u << 6) | (1u << 16) | (7u << 24) | (2u << 28);
    RCC_CR |= RCC_CR_PLLON;
    while (!(RCC_CR & RCC_CR_PLLRDY)) {
    }
    RCC_CFGR = RCC_CFGR_PPRE1_DIV2 | RCC_CFGR_SW_PLL; /* AHB /1, APB1 /2, APB2 /1 */
    while ((RCC_CFGR & RCC_CFGR_SWS_MASK) != RCC_CFGR_SWS_PLL) {
    }
    RCC_AHB1ENR |= RCC_AHB1ENR_GPIOAEN | RCC_AHB1ENR_GPIOBEN | RCC_AHB1ENR_GPIOCEN;
    RCC_APB1ENR |= RCC_APB1ENR_USART2EN | RCC_APB1ENR_I2C1EN;
    RCC_APB2ENR |= RCC_APB2ENR_SPI1EN;
    (void)RCC_APB2ENR; /* read back: clocks settle before first access */
}

void gpio_config(uint32_t port, unsigned pin, gpio_mode_t mode, gpio_pull_t pull,
                 bool open_drain, unsigned af)
{
    unsigned s2 = pin * 2u;
    unsigned s4 = (pin % 8u) * 4u;
    GPIO_AFR(port, pin) = (GPIO_AFR(port, pin) & ~(0xFu << s4)) | ((af & 0xFu) << s4);
    GPIO_OTYPER(port) = (GPIO_OTYPER(port) & ~(1u << pin)) | ((open_drain ? 1u : 0u) << pin);
    GPIO_OSPEEDR(port) = (GPIO_OSPEEDR(port) & ~(3u << s2)) | (2u << s2); /* fast */
    GPIO_PUPDR(port) = (GPIO_PUPDR(port) & ~(3u << s2)) | ((uint32_t)pull << s2);
    GPIO_MODER(port) = (GPIO_MODER(port) & ~(3u << s2)) | ((uint32_t)mode << s2);
}

void gpio_write(uint32_t port, unsigned pin, bool high)
{
    GPIO_BSRR(port) = high ? (1u << pin) : (1u << (pin + 16u));
}

bool gpio_read(uint32_t port, unsigned pin)
{
    return (GPIO_IDR(port) >> pin) & 1u;
}

void delay_ms(uint32_t ms)
{
    uint32_t start = systick_millis();
    while ((systick_millis() - start) < ms) {
    }
}

/* ---- I2C1 (STM32F4 "v1" I2C peripheral) ---- */

void i2c1_init(void)
{
    I2C_CR1(I2C1_BASE) = I2C_CR1_SWRST;
    I2C_CR1(I2C1_BASE) = 0;
    I2C_CR2(I2C1_BASE) = APB1_HZ / 1000000u;                 /* FREQ = 42 */
    I2C_CCR(I2C1_BASE) = APB1_HZ / (2u * 100000u);           /* standard mode, 100 kHz */
    I2C_TRISE(I2C1_BASE) = APB1_HZ / 1000000u + 1u;          /* 1000 ns max rise */
    I2C_CR1(I2C1_BASE) = I2C_CR1_PE;
}

static int wait_sr1(uint32_t flag)
{
    for (uint32_t i = 0; i < SPIN_LIMIT; i++) {
        uint32_t sr1 = I2C_SR1(I2C1_BASE);
        if (sr1 & (I2C_SR1_AF | I2C_SR1_BERR | I2C_SR1_ARLO)) {
            return -1;
        }
        if (sr1 & flag) {
            return 0;
        }
    }
    return -1;
}

static int i2c_fail(void)
{
    I2C_SR1(I2C1_BASE) = 0; /* clear AF/BERR/ARLO */
    I2C_CR1(I2C1_BASE) |= I2C_CR1_STOP;
    return -1;
}

static int i2c_start(uint8_t addr_rw)
{
    I2C_CR1(I2C1_BASE) |= I2C_CR1_START;
    if (wait_sr1(I2C_SR1_SB) != 0) {
        return -1;
    }
    I2C_DR(I2C1_BASE) = addr_rw;
    return wait_sr1(I2C_SR1_ADDR);
}

static int i2c_wait_idle(void)
{
    for (uint32_t i = 0; i < SPIN_LIMIT; i++) {
        if (!(I2C_SR2(I2C1_BASE) & I2C_SR2_BUSY)) {
            return 0;
        }
    }
    i2c1_init(); /* bus stuck: reset the peripheral */
    return -1;
}

int i2c1_write_reg(uint8_t addr7, uint8_t reg, uint8_t value)
{
    if (i2c_wait_idle() != 0) {
        return -1;
    }
    if (i2c_start((uint8_t)(addr7 << 1)) != 0) {
        return i2c_fail();
    }
    (void)I2C_SR2(I2C1_BASE); /* SR1 then SR2 read clears ADDR */
    I2C_DR(I2C1_BASE) = reg;
    if (wait_sr1(I2C_SR1_TXE) != 0) {
        return i2c_fail();
    }
    I2C_DR(I2C1_BASE) = value;
    if (wait_sr1(I2C_SR1_BTF) != 0) {
        return i2c_fail();
    }
    I2C_CR1(I2C1_BASE) |= I2C_CR1_STOP;
    return 0;
}

int i2c1_read_regs(uint8_t addr7, uint8_t reg, uint8_t *buf, size_t len)
{
    if (len == 0) {
        return 0;
    }
    if (i2c_wait_idle() != 0) {
        return -1;
    }
    if (i2c_start((uint8_t)(addr7 << 1)) != 0) {
        return i2c_fail();
    }
    (void)I2C_SR2(I2C1_BASE);
    I2C_DR(I2C1_BASE) = reg;
    if (wait_sr1(I2C_SR1_BTF) != 0) {
        return i2c_fail();
    }
    /* repeated start, read */
    I2C_CR1(I2C1_BASE) |= I2C_CR1_ACK;
    if (i2c_start((uint8_t)((addr7 << 1) | 1u)) != 0) {
        I2C_CR1(I2C1_BASE) &= ~I2C_CR1_ACK;
        return i2c_fail();
    }
    /* The NACK/STOP for the last byte must be set before it is clocked in:
     * no interrupt may delay us between the last two bytes. */
    irq_disable();
    if (len == 1) {
        I2C_CR1(I2C1_BASE) &= ~I2C_CR1_ACK;
        (void)I2C_SR2(I2C1_BASE);
        I2C_CR1(I2C1_BASE) |= I2C_CR1_STOP;
    } else {
        (void)I2C_SR2(I2C1_BASE);
    }
    int rc = 0;
    for (size_t i = 0; i < len; i++) {
        if (wait_sr1(I2C_SR1_RXNE) != 0) {
            rc = -1;
            break;
        }
        if (len >= 2 && i == len - 2) {
            /* reading byte N-2 starts byte N-1 = last: NACK it, then STOP */
            I2C_CR1(I2C1_BASE) &= ~I2C_CR1_ACK;
            I2C_CR1(I2C1_BASE) |= I2C_CR1_STOP;
        }
        buf[i] = (uint8_t)I2C_DR(I2C1_BASE);
    }
    irq_enable();
    return rc == 0 ? 0 : i2c_fail();
}

/* ---- SPI1 ---- */

void spi1_init(void)
{
    SPI_CR1(SPI1_BASE) = SPI_CR1_MSTR | SPI_CR1_BR_DIV16 | SPI_CR1_SSM | SPI_CR1_SSI;
    SPI_CR1(SPI1_BASE) |= SPI_CR1_SPE;
}

uint8_t spi1_transfer(uint8_t out)
{
    for (uint32_t i = 0; i < SPIN_LIMIT && !(SPI_SR(SPI1_BASE) & SPI_SR_TXE); i++) {
    }
    *(volatile uint8_t *)&SPI_DR(SPI1_BASE) = out;
    for (uint32_t i = 0; i < SPIN_LIMIT && !(SPI_SR(SPI1_BASE) & SPI_SR_RXNE); i++) {
    }
    return *(volatile uint8_t *)&SPI_DR(SPI1_BASE);
}
