"""vmboot-core with the tests' own device kind (tests/fake_device.py) on its platform."""
import sys

import vmboot.tests.fake_device  # noqa: F401  (registers it)
from vmboot.core.cli import main

sys.exit(main())
