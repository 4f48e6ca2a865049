"""Package layout: the top-level folders install into the ``vmboot`` namespace.

``core/`` becomes ``vmboot.core``, ``devices/`` becomes ``vmboot.devices`` and so on,
so nothing is ever installed as a bare ``core`` or ``devices`` package.
"""
from setuptools import find_namespace_packages, setup

FOLDERS = ("abi", "core", "devices", "ipc", "assets", "launcher", "policies", "tests", "bench")

packages: list[str] = []
package_dir: dict[str, str] = {}
for folder in FOLDERS:
    package_dir[f"vmboot.{folder}"] = folder
    packages.append(f"vmboot.{folder}")
    packages += [f"vmboot.{folder}.{sub}" for sub in find_namespace_packages(folder, exclude=["*__pycache__*"])]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={
        "vmboot.policies": ["*.policy"],
        "vmboot.assets": ["unicorn/*.patch", "guest_files/*"],
    },
    cffi_modules=["core/kvm/abi_build.py:ffibuilder"],
    zip_safe=False,
)
