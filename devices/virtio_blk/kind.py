"""A virtio-blk disk (virtio 1.2 §5.2), one per --disk; its death ends the VM (requests are in flight)."""
from vmboot.abi.pci import PCI_CLASS_STORAGE_SCSI
from vmboot.abi.virtio import VIRTIO_ID_BLOCK
from vmboot.devices.registry import Attach, DeviceKind, Restart, Virtio

from .blk import VirtioBlk


def build(params: dict, fds: dict, host) -> VirtioBlk:
    return VirtioBlk(fds["disk"], bool(params["readonly"]), serial=str(params["serial"]), name=str(params["name"]))


KIND = DeviceKind(
    "virtio_blk", Restart.NEVER, build, attach=Attach.DISK,
    virtio=Virtio(VIRTIO_ID_BLOCK, VirtioBlk.num_queues, PCI_CLASS_STORAGE_SCSI), exercise=f"{__package__}.exercise",
)
