"""PCI numbers a device kind names (PCI Code and ID Assignment Specification 1.12)."""

# §1.2 base class 01h (mass storage), subclass 00h (SCSI): what QEMU reports for virtio-blk.
PCI_CLASS_STORAGE_SCSI = 0x010000
