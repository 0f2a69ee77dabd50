/* Thin SX1276 (RFM95W) LoRa receiver: 868 MHz, SF7, BW 125 kHz, CR 4/5,
 * explicit header, payload CRC on, sync word 0x12, continuous RX. */
#ifndef NODE2_SX1276_H
#define NODE2_SX1276_H

#include <stdbool.h>

#include "radio.h"

#define SX1276_FREQ_HZ 868000000u

/* Reset, check the silicon version and start continuous RX. */
bool sx1276_init(void);
/* Call when DIO0 (RxDone) is high, or to poll: true when a packet was read. */
bool sx1276_poll(radio_packet_t *pkt);

#endif
