"""Local and I/O APIC register values and timing helpers for guest programs that take interrupts (tests/test_emulate_*).

Local APIC register offsets are from Intel SDM Vol. 3A Table 11-1 and the
divide values from its Figure 11-10; the I/O APIC's redirection entry is from
the 82093AA datasheet, §3.2.4. Times convert to ACPI PM timer ticks (port
0x608, 3.579545 MHz) and to APIC timer counts at APIC_BUS_FREQUENCY / divisor.
"""
from __future__ import annotations

from vmboot.core.emulate.lapic import APIC_BUS_FREQUENCY
from vmboot.devices.pmtimer.pmtimer import PM_TIMER_FREQUENCY

MODES = ["protected", "long"]

# Local APIC registers (SDM Vol. 3A Table 11-1) and values.
APIC_TPR, APIC_PPR, APIC_EOI, APIC_SVR = 0x080, 0x0A0, 0x0B0, 0x0F0
APIC_ISR_64, APIC_IRR_64 = 0x120, 0x220  # the ISR and IRR words for vectors 64-95
APIC_ICR_LOW = 0x300
APIC_LVT_TIMER, APIC_TIMER_INITIAL, APIC_TIMER_CURRENT, APIC_TIMER_DIVIDE = 0x320, 0x380, 0x390, 0x3E0
SVR_ENABLED = 0x1FF  # APIC software enable, spurious vector 0xFF
LVT_MASKED = 1 << 16
LVT_PERIODIC = 1 << 17
ICR_SELF = 1 << 18  # destination shorthand "self", fixed delivery
# Divide configuration values (SDM Figure 11-10) and the divisor each selects.
DIVIDE = {1: 0xB, 2: 0x0, 16: 0x3, 128: 0xA}

# I/O APIC redirection entry for GSI 4, the UART (82093AA §3.2.4).
IOAPIC_RTE4_LOW, IOAPIC_RTE4_HIGH = 0x10 + 2 * 4, 0x10 + 2 * 4 + 1
RTE_REMOTE_IRR = 1 << 14
RTE_LEVEL = 1 << 15

TIMER_VECTOR = 0x40
IPI_VECTOR = 0x50
UART_VECTOR = 0x31


def pm_ticks(seconds: float) -> int:
    return int(seconds * PM_TIMER_FREQUENCY)


def apic_count(seconds: float, divisor: int) -> int:
    return round(seconds * APIC_BUS_FREQUENCY / divisor)
