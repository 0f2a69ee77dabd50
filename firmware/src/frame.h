/* Node 1 -> Node 2 LoRa frame, version 1.
 *
 * Little-endian, 15 bytes:
 *   0      magic 0xA5
 *   1      version (1)
 *   2      node id (u8)
 *   3..4   sequence number (u16)
 *   5..6   temperature (i16, centi-degC)
 *   7..8   relative humidity (u16, centi-%)
 *   9..12  gas resistance (u32, ohm)
 *   13..14 CRC-16/CCITT-FALSE over bytes 0..12
 */
#ifndef NODE2_FRAME_H
#define NODE2_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define FRAME_LEN 15u
#define FRAME_CRC_OFFSET 13u
#define FRAME_MAGIC 0xA5u
#define FRAME_VERSION 1u

typedef struct {
    uint8_t node_id;
    uint16_t seq;
    int16_t temperature_centi;  /* centi-degC */
    uint16_t humidity_centi;    /* centi-% RH */
    uint32_t gas_resistance;    /* ohm */
} frame_t;

typedef enum {
    FRAME_OK = 0,
    FRAME_ERR_ARG = -1,
    FRAME_ERR_SHORT = -2,
    FRAME_ERR_LONG = -3,
    FRAME_ERR_MAGIC = -4,
    FRAME_ERR_VERSION = -5,
    FRAME_ERR_CRC = -6,
} frame_status_t;

/* CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no xorout. */
uint16_t crc16_ccitt_false(const uint8_t *data, size_t len);

/* Writes FRAME_LEN bytes; returns FRAME_LEN, or 0 if cap is too small. */
size_t frame_encode(const frame_t *frame, uint8_t *out, size_t cap);

/* Validates length, magic, version and CRC; fills *out only on FRAME_OK. */
frame_status_t frame_decode(const uint8_t *buf, size_t len, frame_t *out);

const char *frame_status_str(frame_status_t status);

#endif
