/* Host build of the application (for tests): the simulated Node 1 and BMP280
 * of the emulated board, stdout as the UART and a virtual millisecond clock
 * that advances by 1 ms per wait. */
#include <stdio.h>
#include <stdlib.h>

#include "board.h"
#include "sim_bmp280.h"
#include "sim_node1.h"

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
static uint32_t s_now_ms;

void board_init(void)
{
    sim_node1_init(&s_node1, 0x1D0DE1u, SIM_INTERVAL_MS, SIM_INTERVAL_MS,
                   SIM_NODE1_FRAMES);
    sim_bmp280_init(&s_bmp, 0xB3280u);
    s_now_ms = 0;
}

void board_write_line(const char *line, size_t len)
{
    fwrite(line, 1, len, stdout);
    fflush(stdout);
}

bool board_radio_receive(radio_packet_t *pkt)
{
    return sim_node1_poll(&s_node1, s_now_ms, pkt);
}

const bmp280_bus_t *board_bmp280_bus(void)
{
    return &s_bus;
}

uint32_t board_millis(void)
{
    return s_now_ms;
}

void board_wait_event(void)
{
    s_now_ms++;
}

void board_exit(int code)
{
    exit(code);
}
