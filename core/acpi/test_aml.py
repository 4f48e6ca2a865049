"""The AML encoder, byte for byte (ACPI 6.5 §20.2)."""
import pytest

from vmboot.core.acpi import aml
from vmboot.core.acpi.aml import (Aml, buffer, data_object, device, eisa_id, integer, method, name, name_seg,
                                  name_string, package, pkg_length, return_, scope, string)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# -- names ---------------------------------------------------------------------------------------------

def test_name_segments_are_padded_with_underscores():
    assert name_seg("_SB") == b"_SB_"
    assert name_seg("RTC") == b"RTC_"
    assert name_seg("A") == b"A___"
    assert name_seg("C0FE") == b"C0FE"


@pytest.mark.parametrize("bad", ["", "1ABC", "abcd", "PCI0X", "A-B", "A.B"])
def test_invalid_name_segments_are_refused(bad):
    with pytest.raises(ValueError):
        name_seg(bad)


@pytest.mark.parametrize("path, encoded", [
    ("_HID", "5f 48 49 44"),
    ("\\_SB", "5c 5f 53 42 5f"),
    ("\\_SB.PCI0", "5c 2e 5f 53 42 5f 50 43 49 30"),
    ("_SB.PCI0.COM1", "2f 03 5f 53 42 5f 50 43 49 30 43 4f 4d 31"),
    ("^^FOO", "5e 5e 46 4f 4f 5f"),
    ("^PCI0.RTC", "5e 2e 50 43 49 30 52 54 43 5f"),
    ("\\", "5c 00"),
])
def test_name_strings(path, encoded):
    assert name_string(path) == h(encoded)


def test_empty_name_is_refused():
    with pytest.raises(ValueError):
        name_string("")


# -- package length: every encoding and its boundaries (§20.2.4) ----------------------------------------

@pytest.mark.parametrize("content, encoded", [
    (0, "01"),
    (62, "3f"),  # largest one-byte PkgLength: 62 + 1 = 0x3F
    (63, "41 04"),  # 63 + 2 = 0x041
    (4093, "4f ff"),  # 4093 + 2 = 0xFFF, the largest two-byte PkgLength
    (4094, "81 00 01"),  # 4094 + 3 = 0x1001
    ((1 << 20) - 4, "8f ff ff"),  # 0xFFFFF
    ((1 << 20) - 3, "c1 00 00 01"),  # 0x100001
    ((1 << 28) - 5, "cf ff ff ff"),  # 0xFFFFFFF, the largest PkgLength
])
def test_package_lengths(content, encoded):
    assert pkg_length(content) == h(encoded)


def test_package_length_limit():
    with pytest.raises(ValueError):
        pkg_length((1 << 28) - 4)


def test_long_bodies_get_multi_byte_package_lengths():
    big = device("BIG", name("_CRS", buffer(bytes(100))))
    # DeviceOp, then a two-byte PkgLength covering itself, the name and the Name term.
    body = name_string("BIG") + name("_CRS", buffer(bytes(100)))
    assert big[:2] == h("5b 82")
    assert big[2:4] == pkg_length(len(body))
    assert len(big) == 2 + 2 + len(body)


# -- data objects (§20.2.3) -------------------------------------------------------------------------------

@pytest.mark.parametrize("value, encoded", [
    (0, "00"),  # ZeroOp
    (1, "01"),  # OneOp
    (2, "0a 02"),
    (0xFF, "0a ff"),
    (0x100, "0b 00 01"),
    (0xFFFF, "0b ff ff"),
    (0x10000, "0c 00 00 01 00"),
    (0xFFFFFFFF, "0c ff ff ff ff"),
    (1 << 32, "0e 00 00 00 00 01 00 00 00"),
    ((1 << 64) - 1, "0e ff ff ff ff ff ff ff ff"),
])
def test_integers_take_the_shortest_encoding(value, encoded):
    assert integer(value) == h(encoded)


@pytest.mark.parametrize("bad", [-1, 1 << 64])
def test_integers_out_of_range(bad):
    with pytest.raises(ValueError):
        integer(bad)


def test_string():
    assert string("ACPI0007") == h("0d 41 43 50 49 30 30 30 37 00")
    with pytest.raises(ValueError):
        string("a\0b")


def test_buffer():
    assert buffer(b"\x01\x02") == h("11 05 0a 02 01 02")
    assert buffer(b"") == h("11 02 00")


def test_package_of_integers():
    # Name (_S5, Package () {5, 0, 0, 0}) as iasl writes it.
    assert package(5, 0, 0, 0) == h("12 07 04 0a 05 00 00 00")


def test_nested_packages_and_strings():
    assert package("A", [1]) == h("12 09 02 0d 41 00 12 03 01 01")


def test_package_element_limit():
    with pytest.raises(ValueError):
        package(*[0] * 256)


def test_eisa_ids():
    assert eisa_id("PNP0A03") == h("0c 41 d0 0a 03")
    assert eisa_id("PNP0A08") == h("0c 41 d0 0a 08")
    assert eisa_id("PNP0501") == h("0c 41 d0 05 01")
    assert eisa_id("PNP0B00") == h("0c 41 d0 0b 00")  # a DWord even when the value would fit less


@pytest.mark.parametrize("bad", ["PNP0A0", "pnp0a03", "PNP0A0G", "PN10A03"])
def test_invalid_eisa_ids(bad):
    with pytest.raises(ValueError):
        eisa_id(bad)


def test_python_values_become_data_objects():
    assert data_object(7) == integer(7)
    assert data_object("X") == string("X")
    assert data_object([1, 2]) == package(1, 2)
    assert data_object(integer(300)) == h("0b 2c 01")
    with pytest.raises(TypeError):
        data_object(b"\x01")  # raw bytes must say whether they are a buffer
    with pytest.raises(TypeError):
        data_object(1.5)


# -- terms (§20.2.5) ---------------------------------------------------------------------------------

def test_name():
    assert name("_UID", 0) == h("08 5f 55 49 44 00")
    assert name("_S5", package(5, 0, 0, 0)) == h("08 5f 53 35 5f 12 07 04 0a 05 00 00 00")


def test_scope():
    assert scope("\\_SB") == h("10 06 5c 5f 53 42 5f")
    assert scope("\\_SB", name("_UID", 1)) == h("10 0c 5c 5f 53 42 5f 08 5f 55 49 44 01")


def test_device():
    assert device("COM1", name("_UID", 0)) == h("5b 82 0b 43 4f 4d 31 08 5f 55 49 44 00")


def test_method_and_return():
    # Method (_STA, 0, NotSerialized) { Return (0x0F) }
    assert method("_STA", return_(0x0F)) == h("14 09 5f 53 54 41 00 a4 0a 0f")


def test_method_flags():
    # ArgCount 2, Serialized, SyncLevel 3: 0b0011_1_010.
    assert method("FOO", args=2, serialized=True, sync_level=3) == h("14 06 46 4f 4f 5f 3a")
    with pytest.raises(ValueError):
        method("FOO", args=8)
    with pytest.raises(ValueError):
        method("FOO", sync_level=16)


def test_builders_return_aml():
    assert isinstance(device("X"), Aml)
    assert isinstance(aml.name_string("X"), Aml)
    assert repr(integer(2)) == "Aml(0a 02)"
