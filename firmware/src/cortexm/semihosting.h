/* ARM semihosting (debugger/emulator only: on bare hardware without a
 * debugger the BKPT faults). */
#ifndef NODE2_SEMIHOSTING_H
#define NODE2_SEMIHOSTING_H

/* SYS_EXIT: status 0 -> ADP_Stopped_ApplicationExit (host exit code 0),
 * anything else -> ADP_Stopped_RunTimeErrorUnknown (host exit code 1). */
void semihosting_exit(int status) __attribute__((noreturn));

#endif
