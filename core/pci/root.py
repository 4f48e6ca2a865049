"""PCI bus 0 and configuration mechanism #1 (ports 0xCF8-0xCFF).

PCI Local Bus Specification 3.0, §3.2.2.3.2: a 32-bit write to CONFIG_ADDRESS
(0xCF8) selects bus/device/function/register; accesses to CONFIG_DATA
(0xCFC-0xCFF) then reach that register. A function that does not exist reads
as all ones.
"""
from __future__ import annotations

from typing import Protocol

CONFIG_ADDRESS = 0  # offset of 0xCF8 in this device's 8-port range
CONFIG_DATA = 4  # offset of 0xCFC
CONFIG_ADDRESS_ENABLE = 1 << 31
CONFIG_ADDRESS_MASK = 0x80FFFFFC


class PciFunction(Protocol):
    def config_read(self, offset: int, size: int) -> bytes: ...

    def config_write(self, offset: int, data: bytes) -> None: ...


def bdf(bus: int, device: int, function: int) -> int:
    return (bus << 8) | (device << 3) | function


class PciRoot:
    def __init__(self):
        self.functions: dict[int, PciFunction] = {}

    def attach(self, device: int, function: PciFunction, func: int = 0) -> None:
        key = bdf(0, device, func)
        if key in self.functions:
            raise ValueError(f"PCI slot 00:{device:02x}.{func} is taken")
        self.functions[key] = function

    def free_slot(self) -> int:
        for dev in range(1, 32):
            if bdf(0, dev, 0) not in self.functions:
                return dev
        raise ValueError("no free PCI slot on bus 0")

    def config_read(self, key: int, offset: int, size: int) -> bytes:
        fn = self.functions.get(key)
        return fn.config_read(offset, size) if fn else b"\xff" * size

    def config_write(self, key: int, offset: int, data: bytes) -> None:
        fn = self.functions.get(key)
        if fn:
            fn.config_write(offset, data)


class PciConfigIo:
    """Ports 0xCF8-0xCFF as one device."""

    def __init__(self, root: PciRoot):
        self.root = root
        self.address = 0

    def _target(self) -> tuple[int, int] | None:
        if not self.address & CONFIG_ADDRESS_ENABLE:
            return None
        return (self.address >> 8) & 0xFFFF, self.address & 0xFC

    def read(self, offset: int, size: int) -> bytes:
        if offset == CONFIG_ADDRESS and size == 4:
            return self.address.to_bytes(4, "little")
        if offset >= CONFIG_DATA:
            target = self._target()
            if target:
                key, reg = target
                return self.root.config_read(key, reg + offset - CONFIG_DATA, size)
        return b"\xff" * size

    def write(self, offset: int, data: bytes) -> None:
        if offset == CONFIG_ADDRESS and len(data) == 4:
            self.address = int.from_bytes(data, "little") & CONFIG_ADDRESS_MASK
        elif offset >= CONFIG_DATA:
            target = self._target()
            if target:
                key, reg = target
                self.root.config_write(key, reg + offset - CONFIG_DATA, data)
