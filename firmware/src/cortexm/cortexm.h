/* The few Cortex-M4 core registers and instructions the firmware uses. */
#ifndef NODE2_CORTEXM_H
#define NODE2_CORTEXM_H

#include <stdint.h>

#define REG32(addr) (*(volatile uint32_t *)(uintptr_t)(addr))

#define SYST_CSR REG32(0xE000E010u)
#define SYST_RVR REG32(0xE000E014u)
#define SYST_CVR REG32(0xE000E018u)
#define SYST_CSR_ENABLE (1u << 0)
#define SYST_CSR_TICKINT (1u << 1)
#define SYST_CSR_CLKSOURCE (1u << 2) /* processor clock */

static inline void cpu_wfi(void) { __asm volatile("wfi" ::: "memory"); }
static inline void cpu_dmb(void) { __asm volatile("dmb" ::: "memory"); }
static inline void irq_disable(void) { __asm volatile("cpsid i" ::: "memory"); }
static inline void irq_enable(void) { __asm volatile("cpsie i" ::: "memory"); }

/* SysTick interrupt every ms from the processor clock; the handler lives in
 * startup.c and counts milliseconds. */
void systick_start(uint32_t cpu_hz);
uint32_t systick_millis(void);

#endif
