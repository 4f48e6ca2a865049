"""The PCI host bridge at 00:00.0.

CloudHv identifies the platform by this device: SEC/PEI read 00:00.0 and assert
unless it is 8086:0D57 (OvmfPkg/Include/IndustryStandard/CloudHv.h,
CLOUDHV_DEVICE_ID).
"""
from __future__ import annotations

from .config_space import PCI_CLASS_BRIDGE_HOST, PciConfigSpace

PCI_VENDOR_ID_INTEL = 0x8086
CLOUDHV_DEVICE_ID = 0x0D57


class HostBridge:
    def __init__(self):
        self.config = PciConfigSpace(PCI_VENDOR_ID_INTEL, CLOUDHV_DEVICE_ID, PCI_CLASS_BRIDGE_HOST << 8)

    def config_read(self, offset: int, size: int) -> bytes:
        return self.config.read(offset, size)

    def config_write(self, offset: int, data: bytes) -> None:
        self.config.write(offset, data)
