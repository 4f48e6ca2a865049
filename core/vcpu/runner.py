"""The vCPU loop: run, route I/O exits, turn the rest into stop requests."""
from __future__ import annotations

import logging
from collections import Counter
from typing import Callable

from ..events import VmEvents
from .base import Vcpu
from .dispatch import IoDispatcher
from .exits import IO_EXITS, CpuError, Hlt, Interrupted, Shutdown, SystemEvent

log = logging.getLogger("vmboot.vcpu")


def run_vcpu(vcpu: Vcpu, io: IoDispatcher, events: VmEvents,
             explain: Callable[[Vcpu, CpuError], str], counts: Counter[str]) -> None:
    """Run ``vcpu`` until the VM is asked to stop. Never raises: failures become stop requests.

    ``counts`` tallies the exits that are not I/O (the buses count those).
    """
    try:
        while not events.stopping:
            ex = vcpu.run()
            kind = type(ex)
            if kind in IO_EXITS:
                data = io.handle(ex)
                if data is not None:
                    vcpu.complete_read(data)
                continue
            counts[kind.__name__] += 1
            if kind is Interrupted:
                continue
            if kind is SystemEvent:
                if ex.kind == "reset":
                    events.reset("hypervisor (system reset event)")
                elif ex.kind == "poweroff":
                    events.poweroff("hypervisor (system shutdown event)")
                else:
                    events.error(f"the guest crashed (hypervisor reported a {ex.kind} event)")
            elif kind is Shutdown:
                events.error(f"the guest triple-faulted (CPU shutdown) at rip {ex.rip:#x}")
            elif kind is Hlt:
                events.error(f"vCPU {vcpu.index} halted with no interrupt controller to wake it")
            elif kind is CpuError:
                events.error(explain(vcpu, ex))
            else:
                events.error(f"vCPU {vcpu.index}: unexpected exit {ex!r}")
    except Exception as err:  # a backend failure must end the VM, not hang it
        log.debug("vCPU %d failed", vcpu.index, exc_info=True)
        events.error(f"vCPU {vcpu.index} failed: {err}")
