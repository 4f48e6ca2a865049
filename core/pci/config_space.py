"""A type 0 PCI configuration header with per-bit write masks.

Offsets and bits follow the PCI Local Bus Specification 3.0, §6.1-§6.2.
"""
from __future__ import annotations

import struct

PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_REVISION_ID = 0x08
PCI_CLASS_PROG = 0x09
PCI_CLASS_DEVICE = 0x0A  # subclass at 0x0A, base class at 0x0B
PCI_HEADER_TYPE = 0x0E
PCI_BASE_ADDRESS_0 = 0x10
PCI_SUBSYSTEM_VENDOR_ID = 0x2C
PCI_SUBSYSTEM_ID = 0x2E
PCI_CAPABILITY_LIST = 0x34
PCI_INTERRUPT_LINE = 0x3C
PCI_INTERRUPT_PIN = 0x3D

PCI_COMMAND_IO = 0x1
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_COMMAND_INTX_DISABLE = 0x400

PCI_STATUS_CAP_LIST = 0x10
PCI_HEADER_TYPE_NORMAL = 0x00
PCI_NUM_BARS = 6
PCI_BASE_ADDRESS_SPACE_IO = 0x1
PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x4
PCI_BASE_ADDRESS_MEM_PREFETCH = 0x8
PCI_CAPABILITIES_START = 0x40
PCI_INTERRUPT_PIN_INTA = 1

PCI_CONFIG_SPACE_SIZE = 256

PCI_CLASS_BRIDGE_HOST = 0x0600


class PciConfigSpace:
    """A type 0 header. ``on_change`` is called after any write that may move a BAR
    (a BAR itself or the command register)."""

    def __init__(self, vendor_id: int, device_id: int, class_code: int, revision: int = 0,
                 subsystem_vendor_id: int = 0, subsystem_id: int = 0):
        self.data = bytearray(PCI_CONFIG_SPACE_SIZE)
        self.wmask = bytearray(PCI_CONFIG_SPACE_SIZE)  # 1 bits are writable by the guest
        self.set16(PCI_VENDOR_ID, vendor_id)
        self.set16(PCI_DEVICE_ID, device_id)
        self.data[PCI_REVISION_ID] = revision
        self.set16(PCI_CLASS_DEVICE, class_code >> 8)
        self.data[PCI_CLASS_PROG] = class_code & 0xFF
        self.data[PCI_HEADER_TYPE] = PCI_HEADER_TYPE_NORMAL
        self.set16(PCI_SUBSYSTEM_VENDOR_ID, subsystem_vendor_id)
        self.set16(PCI_SUBSYSTEM_ID, subsystem_id)
        self.set_wmask16(PCI_COMMAND, PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER
                         | PCI_COMMAND_INTX_DISABLE)
        self.wmask[PCI_INTERRUPT_LINE] = 0xFF
        self.bar_sizes: dict[int, int] = {}
        self._cap_tail = PCI_CAPABILITY_LIST
        self._cap_free = PCI_CAPABILITIES_START
        self.on_change = lambda: None

    # -- BARs (PCI 3.0 §6.2.5.1) --------------------------------------------------------
    def add_memory_bar(self, index: int, size: int, prefetchable: bool = False) -> None:
        """A 32-bit memory BAR of ``size`` bytes (a power of two); the guest places it."""
        if size & (size - 1) or size < 16:
            raise ValueError("a BAR size must be a power of two of at least 16 bytes")
        offset = PCI_BASE_ADDRESS_0 + 4 * index
        self.set32(offset, PCI_BASE_ADDRESS_MEM_PREFETCH if prefetchable else 0)
        self.set_wmask32(offset, ~(size - 1) & 0xFFFFFFFF)
        self.bar_sizes[index] = size

    def bar_address(self, index: int) -> int | None:
        """Where the guest put BAR ``index``, or None while memory decoding is off or it is unassigned."""
        if not self.get16(PCI_COMMAND) & PCI_COMMAND_MEMORY:
            return None
        addr = self.get32(PCI_BASE_ADDRESS_0 + 4 * index) & ~0xF
        size = self.bar_sizes[index]
        if addr == 0 or addr + size > 1 << 32 or addr == ~(size - 1) & 0xFFFFFFF0:
            return None  # unassigned, or still holding the all-ones sizing pattern
        return addr

    # -- capabilities (PCI 3.0 §6.7) -------------------------------------------------------
    def add_capability(self, cap_id: int, body: bytes, writable: bytes | None = None) -> int:
        """Append a capability (ID, next pointer, then ``body``); returns its offset."""
        offset = self._cap_free
        length = 2 + len(body)
        if offset + length > PCI_CONFIG_SPACE_SIZE:
            raise ValueError("no room for another PCI capability")
        self.data[offset] = cap_id
        self.data[offset + 1] = 0
        self.data[offset + 2 : offset + length] = body
        if writable:
            self.wmask[offset + 2 : offset + 2 + len(writable)] = writable
        self.data[self._cap_tail if self._cap_tail == PCI_CAPABILITY_LIST else self._cap_tail + 1] = offset
        self._cap_tail = offset
        self._cap_free = (offset + length + 3) & ~3
        self.set16(PCI_STATUS, self.get16(PCI_STATUS) | PCI_STATUS_CAP_LIST)
        return offset

    def set16(self, offset: int, value: int) -> None:
        struct.pack_into("<H", self.data, offset, value)

    def set32(self, offset: int, value: int) -> None:
        struct.pack_into("<I", self.data, offset, value)

    def get16(self, offset: int) -> int:
        return struct.unpack_from("<H", self.data, offset)[0]

    def get32(self, offset: int) -> int:
        return struct.unpack_from("<I", self.data, offset)[0]

    def set_wmask16(self, offset: int, mask: int) -> None:
        struct.pack_into("<H", self.wmask, offset, mask)

    def set_wmask32(self, offset: int, mask: int) -> None:
        struct.pack_into("<I", self.wmask, offset, mask)

    # -- guest access -------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        if offset + size > PCI_CONFIG_SPACE_SIZE:
            return b"\xff" * size
        return bytes(self.data[offset : offset + size])

    def write(self, offset: int, data: bytes) -> None:
        if offset + len(data) > PCI_CONFIG_SPACE_SIZE:
            return
        for i, value in enumerate(data):
            mask = self.wmask[offset + i]
            self.data[offset + i] = (self.data[offset + i] & ~mask) | (value & mask)
        end = offset + len(data)
        if offset <= PCI_COMMAND + 1 and end > PCI_COMMAND or (
                offset < PCI_BASE_ADDRESS_0 + 4 * PCI_NUM_BARS and end > PCI_BASE_ADDRESS_0):
            self.on_change()
