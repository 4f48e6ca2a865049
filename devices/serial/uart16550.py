"""A 16550A UART, as the firmware's and Linux's 8250 drivers use it.

Register names and bits follow the National Semiconductor PC16550D datasheet
(June 1995), Table II. The model is transport-blind: it sees register offsets
0-7, sends transmitted bytes to ``tx``, and drives one interrupt line.

Transmission is instantaneous, so THR is always empty when read. Received bytes
queue in a host-side buffer in front of the FIFO, so a paste into the console
is never overrun; the guest sees an ordinary FIFO with data ready.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

# Register offsets (DLAB = 0 unless noted).
RBR = 0  # receiver buffer (read)
THR = 0  # transmitter holding (write)
DLL = 0  # divisor latch LSB (DLAB = 1)
IER = 1  # interrupt enable
DLM = 1  # divisor latch MSB (DLAB = 1)
IIR = 2  # interrupt identification (read)
FCR = 2  # FIFO control (write)
LCR = 3  # line control
MCR = 4  # modem control
LSR = 5  # line status
MSR = 6  # modem status
SCR = 7  # scratch

IER_ERBFI = 0x01  # received data available
IER_ETBEI = 0x02  # transmitter holding register empty
IER_ELSI = 0x04  # receiver line status
IER_EDSSI = 0x08  # modem status
IER_MASK = 0x0F

IIR_NO_INT = 0x01
IIR_RLS = 0x06  # receiver line status
IIR_RDA = 0x04  # received data available
IIR_THRE = 0x02  # transmitter holding register empty
IIR_MS = 0x00  # modem status
IIR_FIFO_ENABLED = 0xC0

FCR_FIFO_ENABLE = 0x01
FCR_RX_RESET = 0x02
FCR_TX_RESET = 0x04

LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
MCR_MASK = 0x1F

LSR_DR = 0x01  # data ready
LSR_OE = 0x02  # overrun error
LSR_THRE = 0x20  # transmitter holding register empty
LSR_TEMT = 0x40  # transmitter empty

MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80

RX_BUFFER_LIMIT = 1 << 16


class Uart16550:
    def __init__(self, tx: Callable[[bytes], None], irq: Callable[[bool], None]):
        self._tx = tx
        self._irq = irq
        self._irq_level = False
        self.reset()

    def reset(self) -> None:
        self.ier = 0
        self.lcr = 0
        self.mcr = MCR_OUT2
        self.scr = 0
        self.divisor = 12  # 9600 baud from a 1.8432 MHz clock
        self.fifo_enabled = False
        self.rx: deque[int] = deque()
        self.overrun = False
        self.thr_interrupt = False  # THRE interrupt pending until IIR read or THR write
        self._update_irq()

    # -- state for snapshots ------------------------------------------------------------
    def snapshot(self) -> dict:
        return {"ier": self.ier, "lcr": self.lcr, "mcr": self.mcr, "scr": self.scr, "divisor": self.divisor,
                "fifo": self.fifo_enabled, "rx": bytes(self.rx), "overrun": self.overrun,
                "thri": self.thr_interrupt}

    def restore(self, state: dict) -> None:
        self.ier, self.lcr, self.mcr = state["ier"], state["lcr"], state["mcr"]
        self.scr, self.divisor, self.fifo_enabled = state["scr"], state["divisor"], state["fifo"]
        self.rx = deque(state["rx"][:RX_BUFFER_LIMIT])
        self.overrun, self.thr_interrupt = state["overrun"], state["thri"]
        self._update_irq()

    def line_status_copy(self) -> tuple[int | None, tuple[int, ...]]:
        """LSR as a read would return it now, and the registers whose writes can change it;
        None while the read would change something (an overrun it clears). What can
        change it otherwise: received input, reads of RBR, and no write but these."""
        if self.overrun:
            return None, ()
        lsr = LSR_THRE | LSR_TEMT | (LSR_DR if self.rx else 0)
        # FCR resets the receive FIFO; MCR turns loopback on, after which THR writes are received.
        return lsr, (FCR, MCR, THR) if self.mcr & MCR_LOOP else (FCR, MCR)

    # Registers whose reads change nothing, by the registers whose writes can change what they read:
    # IER (or DLM, with DLAB set) by IER/DLM and LCR; MCR by itself; MSR, which has no delta bits
    # here and follows MCR in loopback, by MCR.
    PURE_READS = {IER: (IER, LCR), MCR: (MCR,), MSR: (MCR,)}

    def register_copy(self, reg: int) -> tuple[int, tuple[int, ...]]:
        """A register of PURE_READS as a read would return it now, and what ends that copy."""
        return self._read_reg(reg), self.PURE_READS[reg]

    # -- host side ------------------------------------------------------------------
    def receive(self, data: bytes) -> int:
        """Queue bytes typed on the console; returns how many were accepted."""
        room = RX_BUFFER_LIMIT - len(self.rx)
        accepted = data[:room]
        self.rx.extend(accepted)
        if accepted:
            self._update_irq()
        return len(accepted)

    # -- guest side -------------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        return bytes(self._read_reg(offset + i) for i in range(size))

    def write(self, offset: int, data: bytes) -> None:
        for i, value in enumerate(data):
            self._write_reg(offset + i, value)

    def _read_reg(self, reg: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if reg == RBR:
            if dlab:
                return self.divisor & 0xFF
            value = self.rx.popleft() if self.rx else 0
            self._update_irq()
            return value
        if reg == IER:
            return (self.divisor >> 8) if dlab else self.ier
        if reg == IIR:
            iir = self._pending()
            if iir == IIR_THRE:
                self.thr_interrupt = False
                self._update_irq()
            return iir | (IIR_FIFO_ENABLED if self.fifo_enabled else 0)
        if reg == LCR:
            return self.lcr
        if reg == MCR:
            return self.mcr
        if reg == LSR:
            lsr = LSR_THRE | LSR_TEMT
            if self.rx:
                lsr |= LSR_DR
            if self.overrun:
                lsr |= LSR_OE
                self.overrun = False
                self._update_irq()
            return lsr
        if reg == MSR:
            if self.mcr & MCR_LOOP:
                m = self.mcr
                return ((m & MCR_RTS) << 3) | ((m & MCR_DTR) << 5) | ((m & MCR_OUT1) << 4) | ((m & MCR_OUT2) << 4)
            return MSR_DCD | MSR_DSR | MSR_CTS
        if reg == SCR:
            return self.scr
        return 0xFF

    def _write_reg(self, reg: int, value: int) -> None:
        dlab = self.lcr & LCR_DLAB
        if reg == THR:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
                return
            if self.mcr & MCR_LOOP:
                if len(self.rx) < RX_BUFFER_LIMIT:
                    self.rx.append(value)
                else:
                    self.overrun = True
            else:
                self._tx(bytes((value,)))
            self.thr_interrupt = True
            self._update_irq()
        elif reg == IER:
            if dlab:
                self.divisor = (self.divisor & 0xFF) | (value << 8)
                return
            newly_thre = (value & IER_ETBEI) and not (self.ier & IER_ETBEI)
            self.ier = value & IER_MASK
            if newly_thre:
                self.thr_interrupt = True  # THR is empty: enabling ETBEI raises the interrupt at once
            self._update_irq()
        elif reg == FCR:
            self.fifo_enabled = bool(value & FCR_FIFO_ENABLE)
            if value & FCR_RX_RESET:
                self.rx.clear()
            self._update_irq()
        elif reg == LCR:
            self.lcr = value
        elif reg == MCR:
            self.mcr = value & MCR_MASK
        elif reg == SCR:
            self.scr = value
        # LSR and MSR are read-only.

    # -- interrupts -----------------------------------------------------------------------
    def _pending(self) -> int:
        if self.ier & IER_ELSI and self.overrun:
            return IIR_RLS
        if self.ier & IER_ERBFI and self.rx:
            return IIR_RDA
        if self.ier & IER_ETBEI and self.thr_interrupt:
            return IIR_THRE
        return IIR_NO_INT

    def _update_irq(self) -> None:
        level = self._pending() != IIR_NO_INT
        if level != self._irq_level:
            self._irq_level = level
            self._irq(level)
