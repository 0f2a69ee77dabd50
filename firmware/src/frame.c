#include "frame.h"

uint16_t crc16_ccitt_false(const uint8_t *data, size_t len)
{
    uint16_t crc = 0xFFFFu;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((uint16_t)data[i] << 8);
        for (int bit = 0; bit < 8; bit++) {
            if (crc & 0x8000u) {
                crc = (uint16_t)((crc << 1) ^ 0x1021u);
            } else {
                crc = (uint16_t)(crc << 1);
            }
        }
    }
    return crc;
}

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)(v >> 8);
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
    p[2] = (uint8_t)((v >> 16) & 0xFFu);
    p[3] = (uint8_t)(v >> 24);
}

static uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | ((uint16_t)p[1] << 8));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

size_t frame_encode(const frame_t *frame, uint8_t *out, size_t cap)
{
    if (frame == NULL || out == NULL || cap < FRAME_LEN) {
        return 0;
    }
    out[0] = (uint8_t)FRAME_MAGIC;
    out[1] = (uint8_t)FRAME_VERSION;
    out[2] = frame->node_id;
    put_u16(&out[3], frame->seq);
    put_u16(&out[5], (uint16_t)frame->temperature_centi);
    put_u16(&out[7], frame->humidity_centi);
    put_u32(&out[9], frame->gas_resistance);
    put_u16(&out[FRAME_CRC_OFFSET], crc16_ccitt_false(out, FRAME_CRC_OFFSET));
    return FRAME_LEN;
}

frame_status_t frame_decode(const uint8_t *buf, size_t len, frame_t *out)
{
    if (buf == NULL || out == NULL) {
        return FRAME_ERR_ARG;
    }
    if (len < FRAME_LEN) {
        return FRAME_ERR_SHORT;
    }
    if (len > FRAME_LEN) {
        return FRAME_ERR_LONG;
    }
    if (buf[0] != FRAME_MAGIC) {
        return FRAME_ERR_MAGIC;
    }
    if (buf[1] != FRAME_VERSION) {
        return FRAME_ERR_VERSION;
    }
    if (crc16_ccitt_false(buf, FRAME_CRC_OFFSET) != get_u16(&buf[FRAME_CRC_OFFSET])) {
        return FRAME_ERR_CRC;
    }
    out->node_id = buf[2];
    out->seq = get_u16(&buf[3]);
    out->temperature_centi = (int16_t)get_u16(&buf[5]);
    out->humidity_centi = get_u16(&buf[7]);
    out->gas_resistance = get_u32(&buf[9]);
    return FRAME_OK;
}

const char *frame_status_str(frame_status_t status)
{
    switch (status) {
    case FRAME_OK: return "ok";
    case FRAME_ERR_ARG: return "bad argument";
    case FRAME_ERR_SHORT: return "too short";
    case FRAME_ERR_LONG: return "too long";
    case FRAME_ERR_MAGIC: return "bad magic";
    case FRAME_ERR_VERSION: return "bad version";
    case FRAME_ERR_CRC: return "bad crc";
    }
    return "unknown";
}
