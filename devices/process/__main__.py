"""``python -m vmboot.devices.process KIND ...``: one device process, started by itself."""
from vmboot.devices.process.main import main

main()
