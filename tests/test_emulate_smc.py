"""Self-modifying code on the emulated CPU, and code the host rewrites behind its back.

x86 requires a store to an instruction that was already executed (or is about
to be) to take effect the next time it runs (Intel SDM Vol. 3A §8.1.3). The
emulated CPU translates code into blocks; vmboot's patch keeps QEMU's rule that
pages holding translated code are write-protected, so guest stores invalidate
the blocks they hit. Stores by the host (a device writing guest memory) are
invisible to that mechanism: the host calls ``engine.invalidate_code`` with the
guest-physical range it wrote.
"""
from __future__ import annotations

import pytest

from vmboot.core.events import Outcome
from vmboot.tests.guest import GuestRun, run_guest
from vmboot.tests.guest_asm import PROGRAM

MODES = ["protected", "long"]
MOV_AL_IMM8 = 0xB0  # the opcode of `mov al, imm8`: the byte after it is what the routine outputs


@pytest.mark.parametrize("mode", MODES)
def test_rewriting_an_executed_instruction_on_the_same_page(mode):
    r = run_guest("""
        mov ecx, 3
    again:
    site:
        mov al, 'A'
        mov dx, DEBUG_PORT
        out dx, al
        inc byte [site + 1]        ; data stores on the page that holds this very code
        loop again
        poweroff
    """, accel="emulate", mode=mode)
    assert r.outcome is Outcome.POWEROFF, r.message
    assert r.debug == b"ABC"


@pytest.mark.parametrize("mode", MODES)
def test_rewriting_the_next_instruction_of_the_running_block(mode):
    # The store hits the block being executed: the CPU must not run the stale copy.
    r = run_guest("""
        mov byte [next + 1], 'N'
    next:
        mov al, 'O'
        mov dx, DEBUG_PORT
        out dx, al
        poweroff
    """, accel="emulate", mode=mode)
    assert r.outcome is Outcome.POWEROFF, r.message
    assert r.debug == b"N"


@pytest.mark.parametrize("mode", MODES)
def test_rewriting_a_routine_on_another_page(mode):
    r = run_guest("""
        call routine
        mov byte [routine + 1], 'B'
        call routine
        mov esi, replacement       ; copy a whole new routine over it with a string move
        mov edi, routine
        mov ecx, replacement_end - replacement
        cld
        rep movsb
        call routine
        poweroff
    replacement:
        mov al, 'C'
        mov dx, DEBUG_PORT
        out dx, al
        out dx, al
        ret
    replacement_end:

    align 4096
    routine:
        mov al, 'A'
        mov dx, DEBUG_PORT
        out dx, al
        ret
    """, accel="emulate", mode=mode)
    assert r.outcome is Outcome.POWEROFF, r.message
    assert r.debug == b"ABCC"
    assert r.symbols["routine"] & 0xFFF == 0 and r.symbols["routine"] >> 12 != r.symbols["replacement"] >> 12


def test_rewriting_code_through_another_virtual_mapping():
    # Map 1 GiB..1 GiB+2 MiB onto physical 0 as well, and store to the routine through that
    # alias: translated code is tracked by physical page, so the store still invalidates it.
    r = run_guest("""
        mov qword [0xc000], 0x83   ; PDE for 0x40000000: physical 0, 2 MiB, present, writable
        invlpg [0x40000000]
        call routine
        mov byte [0x40000000 + routine + 1], 'B'
        call routine
        poweroff

    align 4096
    routine:
        mov al, 'A'
        mov dx, DEBUG_PORT
        out dx, al
        ret
    """, accel="emulate", mode="long")
    assert r.outcome is Outcome.POWEROFF, r.message
    assert r.debug == b"AB"


# The host's turn comes at each write to this port: the guest waits in the OUT
# while the test, on the vCPU thread as a device would be, rewrites its code.
PORT_HOST_TURN = 0x700


class HostTurns:
    """A test device: each write to PORT_HOST_TURN runs the host's next step."""

    def __init__(self, steps):
        self.steps = list(steps)

    def read(self, offset: int, size: int) -> bytes:
        return bytes(size)

    def write(self, offset: int, data: bytes) -> None:
        self.steps.pop(0)()


# `routine` sits on its own page. 64-bit programs first copy it to physical 2 MiB, map
# that at virtual 1 GiB only, and run it there: the host names the code by its
# guest-physical address, which no virtual address of the guest equals.
RELOCATED_64 = 0x200000
ALIAS_64 = 0x40000000
HOST_REWRITE = f"""
%if __BITS__ == 64
        mov qword [0xc000], {RELOCATED_64:#x} | 0x83   ; PDE: 1 GiB -> physical 2 MiB, 2 MiB page
        mov qword [0xb008], 0                         ; no identity mapping of physical 2 MiB
        mov rax, cr3
        mov cr3, rax
        mov esi, routine
        mov edi, {ALIAS_64:#x}
        mov ecx, routine_end - routine
        rep movsb
        mov ebx, {ALIAS_64:#x}
%else
        mov ebx, routine
%endif
        call rbx_or_ebx
%rep 3
        mov dx, {PORT_HOST_TURN:#x}
        out dx, al
        call rbx_or_ebx
%endrep
        poweroff

    align 4096
    routine:
        mov al, 'A'
        mov dx, DEBUG_PORT
        out dx, al
        ret
    routine_end:
"""


@pytest.mark.parametrize("mode", MODES)
def test_host_rewrites_code_and_invalidates_it(mode):
    source = HOST_REWRITE.replace("rbx_or_ebx", "rbx" if mode == "long" else "ebx")
    with GuestRun(source, accel="emulate", mode=mode, memory=4 << 20) as run:
        routine, end = run.symbols["routine"], run.symbols["routine_end"]
        assert run.code[routine - PROGRAM] == MOV_AL_IMM8
        physical = RELOCATED_64 if mode == "long" else routine
        engine = run.backend.engine

        def rewrite(output: bytes, invalidate: bool):
            def step():
                run.memory.write(physical + 1, output)
                if invalidate:
                    engine.invalidate_code(physical, physical + end - routine)
            return step

        turns = HostTurns([
            rewrite(b"B", invalidate=False),  # the CPU's translation of the routine is now stale ...
            rewrite(b"B", invalidate=True),  # ... until the host drops it
            rewrite(b"C", invalidate=True),
        ])
        run.platform.ports.register(PORT_HOST_TURN, 1, turns, "host-turns")
        r = run.run(timeout=5.0)
    assert r.outcome is Outcome.POWEROFF, r.message
    assert r.debug == b"AABC"
    assert turns.steps == []
