/* Emulated board (QEMU netduinoplus2, STM32F405): output on USART1, time from
 * SysTick, a simulated Node 1 as the radio and a BMP280 register model on
 * the "bus". The application code above board.h is the same as on hardware. */
#include "board.h"

#include "cortexm.h"
#include "rtt.h"
#include "semihosting.h"
#include "sim_bmp280.h"
#include "sim_node1.h"
#include "uart.h"

/* QEMU models the F405 at 168 MHz (SysTick from the processor clock). */
#define CPU_HZ 168000000u
#define APB2_HZ 84000000u

#ifndef SIM_INTERVAL_MS
#define SIM_INTERVAL_MS 1000u
#endif
/* Frames the simulated Node 1 sends before the radio goes quiet (0: forever). */
#ifndef SIM_NODE1_FRAMES
#define SIM_NODE1_FRAMES 0u
#endif

static sim_node1_t s_node1;
static sim_bmp280_t s_bmp;
static const bmp280_bus_t s_bus = {sim_bmp280_read, sim_bmp280_write, &s_bmp};

void board_init(void)
{
    /* QEMU has no RCC model to enable clocks in; the USART still needs
     * UE|TE before it transmits. */
    uart_init(USART1_BASE, APB2_HZ, 115200u);
    rtt_init();
    sim_node1_init(&s_node1, 0x1D0DE1u, SIM_INTERVAL_MS, SIM_INTERVAL_MS,
                   SIM_NODE1_FRAMES);
    sim_bmp280_init(&s_bmp, 0xB3280u);
    systick_start(CPU_HZ);
}

void board_write_line(const char *line, size_t len)
{
    uart_write(USART1_BASE, line, len);
    (void)rtt_write(line, len);
}

bool board_radio_receive(radio_packet_t *pkt)
{
    return sim_node1_poll(&s_node1, board_millis(), pkt);
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
    semihosting_exit(code);
}
