/* A small SEGGER-RTT-compatible up-buffer (channel 0, "Terminal"). The
 * control block is the symbol _SEGGER_RTT and starts with the id
 * "SEGGER RTT", so probe-rs (and other RTT hosts) find it in RAM. */
#ifndef NODE2_RTT_H
#define NODE2_RTT_H

#include <stddef.h>

#define RTT_UP_BUFFER_SIZE 1024u
#define RTT_DOWN_BUFFER_SIZE 16u

void rtt_init(void);
/* Non-blocking: writes all of data or, if the host has not made room,
 * nothing (a line is never split). Returns bytes written. */
size_t rtt_write(const char *data, size_t len);

#endif
