#include "sx1276.h"

#include "board_pins.h"
#include "hw.h"

#define REG_FIFO 0x00u
#define REG_OP_MODE 0x01u
#define REG_FRF_MSB 0x06u
#define REG_FRF_MID 0x07u
#define REG_FRF_LSB 0x08u
#define REG_LNA 0x0Cu
#define REG_FIFO_ADDR_PTR 0x0Du
#define REG_FIFO_TX_BASE_ADDR 0x0Eu
#define REG_FIFO_RX_BASE_ADDR 0x0Fu
#define REG_FIFO_RX_CURRENT_ADDR 0x10u
#define REG_IRQ_FLAGS 0x12u
#define REG_RX_NB_BYTES 0x13u
#define REG_PKT_SNR_VALUE 0x19u
#define REG_PKT_RSSI_VALUE 0x1Au
#define REG_MODEM_CONFIG_1 0x1Du
#define REG_MODEM_CONFIG_2 0x1Eu
#define REG_PREAMBLE_MSB 0x20u
#define REG_PREAMBLE_LSB 0x21u
#define REG_MAX_PAYLOAD_LENGTH 0x23u
#define REG_MODEM_CONFIG_3 0x26u
#define REG_SYNC_WORD 0x39u
#define REG_DIO_MAPPING_1 0x40u
#define REG_VERSION 0x42u

#define MODE_LONG_RANGE 0x80u
#define MODE_SLEEP 0x00u
#define MODE_STDBY 0x01u
#define MODE_RX_CONTINUOUS 0x05u

#define IRQ_RX_DONE 0x40u
#define IRQ_PAYLOAD_CRC_ERROR 0x20u
#define IRQ_VALID_HEADER 0x10u

#define SX1276_VERSION 0x12u
#define RSSI_OFFSET_HF 157 /* RF_LF/HF port: 868 MHz uses the HF offset */

static void write_reg(uint8_t reg, uint8_t value)
{
    gpio_write(RADIO_NSS_PORT, RADIO_NSS_PIN, false);
    (void)spi1_transfer((uint8_t)(reg | 0x80u));
    (void)spi1_transfer(value);
    gpio_write(RADIO_NSS_PORT, RADIO_NSS_PIN, true);
}

static uint8_t read_reg(uint8_t reg)
{
    gpio_write(RADIO_NSS_PORT, RADIO_NSS_PIN, false);
    (void)spi1_transfer((uint8_t)(reg & 0x7Fu));
    uint8_t v = spi1_transfer(0x00);
    gpio_write(RADIO_NSS_PORT, RADIO_NSS_PIN, true);
    return v;
}

static void read_fifo(uint8_t *buf, size_t len)
{
    gpio_write(RADIO_NSS_PORT, RADIO_NSS_PIN, false);
    (void)spi1_transfer(REG_FIFO);
    for (size_t i = 0; i < len; i++) {
        buf[i] = spi1_transfer(0x00);
    }
    gpio_write(RADIO_NSS_PORT, RADIO_NSS_PIN, true);
}

bool sx1276_init(void)
{
    /* reset: low >= 100 us, then wait 5 ms */
    gpio_write(RADIO_RESET_PORT, RADIO_RESET_PIN, false);
    delay_ms(2);
    gpio_write(RADIO_RESET_PORT, RADIO_RESET_PIN, true);
    delay_ms(6);

    if (read_reg(REG_VERSION) != SX1276_VERSION) {
        return false;
    }
    /* LoRa mode can only be selected in sleep mode */
    write_reg(REG_OP_MODE, MODE_SLEEP);
    write_reg(REG_OP_MODE, MODE_LONG_RANGE | MODE_SLEEP);
    delay_ms(1);

    /* Frf = f * 2^19 / 32 MHz */
    uint32_t frf = (uint32_t)(((uint64_t)SX1276_FREQ_HZ << 19) / 32000000u);
    write_reg(REG_FRF_MSB, (uint8_t)(frf >> 16));
    write_reg(REG_FRF_MID, (uint8_t)(frf >> 8));
    write_reg(REG_FRF_LSB, (uint8_t)frf);

    write_reg(REG_FIFO_TX_BASE_ADDR, 0x00);
    write_reg(REG_FIFO_RX_BASE_ADDR, 0x00);
    write_reg(REG_LNA, 0x23);              /* max gain, LNA boost (HF) */
    write_reg(REG_MODEM_CONFIG_1, 0x72);   /* BW 125 kHz, CR 4/5, explicit header */
    write_reg(REG_MODEM_CONFIG_2, 0x74);   /* SF7, RX payload CRC on */
    write_reg(REG_MODEM_CONFIG_3, 0x04);   /* AGC auto, no low data rate optimise */
    write_reg(REG_PREAMBLE_MSB, 0x00);
    write_reg(REG_PREAMBLE_LSB, 0x08);
    write_reg(REG_SYNC_WORD, 0x12);        /* private network */
    write_reg(REG_MAX_PAYLOAD_LENGTH, 0xFF);
    write_reg(REG_DIO_MAPPING_1, 0x00);    /* DIO0 = RxDone */
    write_reg(REG_IRQ_FLAGS, 0xFF);
    write_reg(REG_OP_MODE, MODE_LONG_RANGE | MODE_STDBY);
    write_reg(REG_OP_MODE, MODE_LONG_RANGE | MODE_RX_CONTINUOUS);
    return (read_reg(REG_OP_MODE) & 0x87u) == (MODE_LONG_RANGE | MODE_RX_CONTINUOUS);
}

bool sx1276_poll(radio_packet_t *pkt)
{
    uint8_t flags = read_reg(REG_IRQ_FLAGS);
    if (!(flags & IRQ_RX_DONE)) {
        return false;
    }
    write_reg(REG_IRQ_FLAGS, 0xFF); /* clear (DIO0 goes low) */

    size_t len = read_reg(REG_RX_NB_BYTES);
    if (len > RADIO_MAX_PAYLOAD) {
        len = RADIO_MAX_PAYLOAD; /* the frame decoder rejects the length anyway */
    }
    write_reg(REG_FIFO_ADDR_PTR, read_reg(REG_FIFO_RX_CURRENT_ADDR));
    read_fifo(pkt->data, len);
    pkt->len = len;
    pkt->phy_crc_ok = (flags & IRQ_PAYLOAD_CRC_ERROR) == 0u;

    int snr_q2 = (int8_t)read_reg(REG_PKT_SNR_VALUE); /* SNR * 4, two's complement */
    int rssi = -RSSI_OFFSET_HF + (int)read_reg(REG_PKT_RSSI_VALUE);
    if (snr_q2 < 0) {
        rssi += snr_q2 / 4; /* below the noise floor the SNR adds in */
    }
    pkt->snr = (int8_t)(snr_q2 / 4);
    pkt->rssi = (int16_t)rssi;
    return true;
}
