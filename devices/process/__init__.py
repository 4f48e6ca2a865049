"""The device side of the device-process runtime: the process, its zygote, its sandbox.

The core side, which starts and supervises these processes, is core/supervisor/.
"""
