"""The legacy 8259A PIC pair and the ELCR, for the emulate backend: masking only.

The emulate platform routes every interrupt through the IOAPIC, so the PICs
never deliver. Guests still program them (ICW1-ICW4) and mask them (OCW1);
this model accepts that and reads back what was written, so a guest that
checks its masks sees a real PIC. Offsets: 0 is the command port, 1 the data
port (0x20/0x21 and 0xA0/0xA1); the ELCR pair (0x4D0/0x4D1) is its own device.
"""
from __future__ import annotations

ICW1_INIT = 0x10
ICW1_ICW4 = 0x01
ICW1_SINGLE = 0x02  # no cascade: ICW3 is not sent
OCW3_SELECT = 0x08
OCW3_READ_ISR = 0x03


class Pic8259:
    def __init__(self):
        self.imr = 0xFF
        self.icw_step = 0  # 0: not initializing; 2-4: expecting ICWn
        self.needs_icw4 = False
        self.single = False
        self.vector_base = 0
        self.read_isr = False

    def read(self, offset: int, size: int) -> bytes:
        value = self.imr if offset == 1 else 0  # IRR and ISR are always empty
        return bytes([value]) * size

    def write(self, offset: int, data: bytes) -> None:
        value = data[0]
        if offset == 0:
            if value & ICW1_INIT:
                self.icw_step, self.needs_icw4, self.imr = 2, bool(value & ICW1_ICW4), 0
                self.single = bool(value & ICW1_SINGLE)
            elif value & OCW3_SELECT:
                self.read_isr = (value & OCW3_READ_ISR) == OCW3_READ_ISR
            return
        if self.icw_step == 2:
            self.vector_base = value & 0xF8
            if self.single:
                self.icw_step = 4 if self.needs_icw4 else 0
            else:
                self.icw_step = 3
        elif self.icw_step == 3:
            self.icw_step = 4 if self.needs_icw4 else 0
        elif self.icw_step == 4:
            self.icw_step = 0
        else:
            self.imr = value  # OCW1


class Elcr:
    """Edge/level control registers (one byte per PIC)."""

    def __init__(self):
        self.value = bytearray(2)

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.value[offset : offset + size]).ljust(size, b"\xff")

    def write(self, offset: int, data: bytes) -> None:
        for i, v in enumerate(data):
            if offset + i < 2:
                self.value[offset + i] = v
