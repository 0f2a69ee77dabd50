/* A received radio packet, as the board hands it to the application. */
#ifndef NODE2_RADIO_H
#define NODE2_RADIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RADIO_MAX_PAYLOAD 64u

typedef struct {
    uint8_t data[RADIO_MAX_PAYLOAD];
    size_t len;
    bool phy_crc_ok;  /* false: the radio reported a payload CRC error */
    int16_t rssi;     /* packet RSSI, dBm */
    int8_t snr;       /* packet SNR, dB */
} radio_packet_t;

#endif
