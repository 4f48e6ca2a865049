"""The 8259A pair as the emulate backend models it (masking only), against the
Intel 8259A datasheet's initialization sequence (ICW1-ICW4) and OCW1-OCW3,
and the ELCR pair at 0x4D0/0x4D1."""
from __future__ import annotations

import pytest

from vmboot.core.emulate.pic import Elcr, Pic8259

COMMAND, DATA = 0, 1


def get(pic: Pic8259, port: int) -> int:
    return pic.read(port, 1)[0]


def put(pic: Pic8259, port: int, value: int) -> None:
    pic.write(port, bytes([value]))


def init(pic: Pic8259, icw1: int, *icws: int) -> None:
    put(pic, COMMAND, icw1)
    for icw in icws:
        put(pic, DATA, icw)


def test_starts_fully_masked():
    pic = Pic8259()
    assert get(pic, DATA) == 0xFF


def test_linux_master_initialization_then_ocw1():
    pic = Pic8259()
    init(pic, 0x11, 0x20, 0x04, 0x01)  # edge, cascade, ICW4; vectors 0x20; slave on IR2; 8086 mode
    assert pic.vector_base == 0x20
    put(pic, DATA, 0xFB)  # OCW1: everything but the cascade input masked
    assert get(pic, DATA) == 0xFB


def test_icw1_clears_the_mask():
    pic = Pic8259()
    put(pic, COMMAND, 0x11)
    assert get(pic, DATA) == 0x00


def test_icw2_to_icw4_are_not_mask_writes():
    pic = Pic8259()
    init(pic, 0x11, 0x28, 0x02, 0x01)
    assert get(pic, DATA) == 0x00
    assert pic.vector_base == 0x28


def test_icw2_keeps_only_the_vector_base_bits():
    pic = Pic8259()
    init(pic, 0x11, 0x77, 0x04, 0x01)
    assert pic.vector_base == 0x70


def test_without_icw4_the_third_data_write_is_ocw1():
    pic = Pic8259()
    init(pic, 0x10, 0x08, 0x04)  # ICW1 without IC4: ICW2, ICW3 only
    put(pic, DATA, 0xA5)
    assert get(pic, DATA) == 0xA5


def test_single_mode_skips_icw3():
    pic = Pic8259()
    init(pic, 0x13, 0x20, 0x01)  # SNGL | IC4: ICW2, ICW4, no ICW3
    put(pic, DATA, 0xFE)
    assert get(pic, DATA) == 0xFE


def test_single_mode_without_icw4_ends_after_icw2():
    pic = Pic8259()
    init(pic, 0x12, 0x20)
    put(pic, DATA, 0x7F)
    assert get(pic, DATA) == 0x7F


def test_reinitialization_restarts_the_sequence():
    pic = Pic8259()
    init(pic, 0x11, 0x20, 0x04, 0x01)
    put(pic, DATA, 0x12)
    init(pic, 0x11, 0x30, 0x04, 0x01)
    assert get(pic, DATA) == 0x00
    assert pic.vector_base == 0x30


@pytest.mark.parametrize("ocw", [0x20, 0x60, 0x0A, 0x0B, 0x68])
def test_ocw2_and_ocw3_leave_the_mask_alone(ocw):
    pic = Pic8259()
    init(pic, 0x11, 0x20, 0x04, 0x01)
    put(pic, DATA, 0xB8)
    put(pic, COMMAND, ocw)  # EOI, specific EOI, read IRR, read ISR, special mask mode
    assert get(pic, DATA) == 0xB8


def test_ocw3_selects_isr_or_irr_and_both_read_empty():
    pic = Pic8259()
    put(pic, COMMAND, 0x0B)
    assert pic.read_isr
    assert get(pic, COMMAND) == 0x00
    put(pic, COMMAND, 0x0A)
    assert not pic.read_isr
    assert get(pic, COMMAND) == 0x00


def test_ocw1_writes_every_bit():
    pic = Pic8259()
    for mask in (0x00, 0x55, 0xAA, 0xFF):
        put(pic, DATA, mask)
        assert get(pic, DATA) == mask


# -- ELCR ---------------------------------------------------------------------------------------


def test_elcr_starts_all_edge():
    assert Elcr().read(0, 2) == b"\x00\x00"


def test_elcr_reads_back_each_byte():
    elcr = Elcr()
    elcr.write(0, b"\x20")  # IRQ5 level
    elcr.write(1, b"\x0e")  # IRQ9-11 level
    assert elcr.read(0, 1) == b"\x20"
    assert elcr.read(1, 1) == b"\x0e"
    assert elcr.read(0, 2) == b"\x20\x0e"


def test_elcr_word_write_sets_both_bytes():
    elcr = Elcr()
    elcr.write(0, b"\x00\x0c")
    assert elcr.read(0, 2) == b"\x00\x0c"


def test_elcr_access_past_its_two_bytes():
    elcr = Elcr()
    elcr.write(1, b"\x01\x02")
    assert elcr.read(1, 2) == b"\x01\xff"
