/* NUCLEO-F446RE + RFM95W (SX1276) + BMP280: the field board. */
#include "board.h"

#include "board_pins.h"
#include "hw.h"
#include "rtt.h"
#include "sx1276.h"
#include "uart.h"

#define RADIO_RETRY_MS 5000u
#define RADIO_POLL_MS 50u /* also poll the IRQ register, in case DIO0 is not wired */

static bool s_radio_ok;
static uint32_t s_radio_retry_at;
static uint32_t s_radio_polled_at;

static int bus_read(void *ctx, uint8_t reg, uint8_t *buf, size_t len)
{
    (void)ctx;
    return i2c1_read_regs(BMP280_I2C_ADDR, reg, buf, len);
}

static int bus_write(void *ctx, uint8_t reg, uint8_t value)
{
    (void)ctx;
    return i2c1_write_reg(BMP280_I2C_ADDR, reg, value);
}

static const bmp280_bus_t s_bus = {bus_read, bus_write, NULL};

static void say(const char *s)
{
    size_t n = 0;
    while (s[n] != '\0') {
        n++;
    }
    board_write_line(s, n);
}

void board_init(void)
{
    /* keep the debug port usable while the core sleeps in WFI (RTT reads) */
    DBGMCU_CR |= DBGMCU_CR_DBG_SLEEP;
    clock_init();
    systick_start(SYSCLK_HZ);
    rtt_init();

    gpio_config(UART_TX_PORT, UART_TX_PIN, GPIO_AF, GPIO_NOPULL, false, UART_AF);
    gpio_config(UART_RX_PORT, UART_RX_PIN, GPIO_AF, GPIO_PULLUP, false, UART_AF);
    uart_init(USART2_BASE, APB1_HZ, 115200u);

    gpio_config(I2C_SCL_PORT, I2C_SCL_PIN, GPIO_AF, GPIO_PULLUP, true, I2C_AF);
    gpio_config(I2C_SDA_PORT, I2C_SDA_PIN, GPIO_AF, GPIO_PULLUP, true, I2C_AF);
    i2c1_init();

    gpio_write(RADIO_NSS_PORT, RADIO_NSS_PIN, true);
    gpio_config(RADIO_NSS_PORT, RADIO_NSS_PIN, GPIO_OUT, GPIO_NOPULL, false, 0);
    gpio_write(RADIO_RESET_PORT, RADIO_RESET_PIN, true);
    gpio_config(RADIO_RESET_PORT, RADIO_RESET_PIN, GPIO_OUT, GPIO_NOPULL, false, 0);
    gpio_config(RADIO_DIO0_PORT, RADIO_DIO0_PIN, GPIO_IN, GPIO_PULLDOWN, false, 0);
    gpio_config(SPI_SCK_PORT, SPI_SCK_PIN, GPIO_AF, GPIO_NOPULL, false, SPI_AF);
    gpio_config(SPI_MISO_PORT, SPI_MISO_PIN, GPIO_AF, GPIO_NOPULL, false, SPI_AF);
    gpio_config(SPI_MOSI_PORT, SPI_MOSI_PIN, GPIO_AF, GPIO_NOPULL, false, SPI_AF);
    spi1_init();

    s_radio_ok = sx1276_init();
    if (!s_radio_ok) {
        say("node2: SX1276 not found, retrying\n");
        s_radio_retry_at = board_millis() + RADIO_RETRY_MS;
    }
}

void board_write_line(const char *line, size_t len)
{
    uart_write(USART2_BASE, line, len);
    (void)rtt_write(line, len);
}

bool board_radio_receive(radio_packet_t *pkt)
{
    uint32_t now = board_millis();
    if (!s_radio_ok) {
        if ((int32_t)(now - s_radio_retry_at) < 0) {
            return false;
        }
        s_radio_ok = sx1276_init();
        s_radio_retry_at = now + RADIO_RETRY_MS;
        if (!s_radio_ok) {
            return false;
        }
    }
    if (gpio_read(RADIO_DIO0_PORT, RADIO_DIO0_PIN) || (now - s_radio_polled_at) >= RADIO_POLL_MS) {
        s_radio_polled_at = now;
        return sx1276_poll(pkt);
    }
    return false;
}

const bmp280_bus_t *board_bmp280_bus(void)
{
    return &s_bus;
}

uint32_t board_millis(void)
{
    return systick_millis();
}

void board_wait_event(void)
{
    cpu_wfi();
}

void board_exit(int code)
{
    (void)code;
    for (;;) {
        cpu_wfi();
    }
}
