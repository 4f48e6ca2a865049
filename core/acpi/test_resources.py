"""Resource descriptors, byte for byte (ACPI 6.5 §6.4), as iasl encodes the same ASL macros."""
import pytest

from vmboot.core.acpi.resources import (Cacheability, dword_memory, end_tag, interrupt, io, irq_no_flags,
                                        memory32_fixed, qword_memory, resource_template, word_bus_number,
                                        word_io)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def test_io_port():
    # IO (Decode16, 0x03F8, 0x03F8, 0x01, 0x08)
    assert io(0x3F8, 0x3F8, 1, 8) == h("47 01 f8 03 f8 03 01 08")


def test_io_port_limits():
    with pytest.raises(ValueError):
        io(0x10000, 0x10000, 1, 1)
    with pytest.raises(ValueError):
        io(0x70, 0x70, 1, 0x100)


def test_irq_no_flags():
    assert irq_no_flags(4) == h("22 10 00")
    assert irq_no_flags(3, 4) == h("22 18 00")
    with pytest.raises(ValueError):
        irq_no_flags(16)


def test_extended_interrupt():
    # Interrupt (ResourceConsumer, Level, ActiveLow, Shared) {16}
    assert interrupt(16, active_low=True, shared=True) == h("89 06 00 0d 01 10 00 00 00")
    # Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) {4, 5}
    assert interrupt(4, 5, edge=True) == h("89 0a 00 03 02 04 00 00 00 05 00 00 00")


def test_word_bus_number():
    # WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, 0, 0, 0, 1)
    assert word_bus_number(0, 0) == h("88 0d 00 02 0c 00 0000 0000 0000 0000 0100")


def test_word_io():
    # WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, 0x0D00, 0xFFFF, 0, 0xF300)
    assert word_io(0x0D00, 0xFFFF) == h("88 0d 00 01 0c 03 0000 000d ffff 0000 00f3")


def test_dword_memory():
    # DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,
    #              0, 0xC0000000, 0xFBFFFFFF, 0, 0x3C000000)
    assert dword_memory(0xC0000000, 0xFBFFFFFF) == h(
        "87 17 00 00 0c 01 00000000 000000c0 fffffffb 00000000 0000003c")


def test_qword_memory():
    # QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Prefetchable, ReadWrite,
    #              0, 0x1000000000, 0x1FFFFFFFFF, 0, 0x1000000000)
    assert qword_memory(1 << 36, (2 << 36) - 1, Cacheability.PREFETCHABLE) == h(
        "8a 2b 00 00 0c 07"
        "0000000000000000 0000000010000000 ffffffff1f000000 0000000000000000 0000000010000000")


def test_address_ranges_must_fit():
    with pytest.raises(ValueError):
        dword_memory(0xC0000000, 1 << 32)
    with pytest.raises(ValueError):
        word_io(0x100, 0xFF)


def test_memory32_fixed():
    # Memory32Fixed (ReadWrite, 0xE8000000, 0x00100000)
    assert memory32_fixed(0xE8000000, 0x100000) == h("86 09 00 01 000000e8 00001000")


def test_resource_template_appends_the_end_tag_inside_a_buffer():
    assert end_tag() == h("79 00")
    # ResourceTemplate () { IO (Decode16, 0x70, 0x70, 0x01, 0x02) }
    assert resource_template(io(0x70, 0x70, 1, 2)) == h("11 0d 0a 0a 47 01 70 00 70 00 01 02 79 00")
