"""The fast registers the ipc fast-path tests (ipc/test_fastpath*.py) declare.

The ACPI PM timer (3.579545 MHz, 24 bits, ACPI 6.5 section 4.8.3.3) as a
Counter, and a 16550's LSR as a Mirror."""
from __future__ import annotations

from vmboot.ipc.fastpath import Counter, Mirror

PM_FREQUENCY = 3_579_545
EPOCH = 1000.0
# The ACPI PM timer at I/O offset 8 of its window: 4 bytes wide, 24 bits counting.
PM = Counter(window=0, offset=8, size=4, frequency=PM_FREQUENCY, epoch=EPOCH, width=24)
LSR = Mirror(window=1, offset=5, size=1)  # a 16550's line status register
