"""vmboot-core with the tests' own device kind (tests/fake_device.py) on its platform."""
import sys

from vmboot.core.cli import main
from vmboot.devices import registry
from vmboot.tests import fake_device

registry.register(fake_device.KIND, fake_device.__name__)
sys.exit(main())
