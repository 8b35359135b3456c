from setuptools import find_packages, setup

setup(
    name="mayfly",
    version="0.1.0",
    description="eBPF runtime security sensor for short-lived containers",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    # ebpf/ and rules/ stay at the top level of the repo, and ship inside the package.
    packages=find_packages(include=["sensor", "sensor.*"]) + ["sensor.ebpf", "sensor.rules"],
    package_dir={"sensor": "sensor", "sensor.ebpf": "ebpf", "sensor.rules": "rules"},
    package_data={
        "sensor": ["py.typed"],
        "sensor.ebpf": ["*.c", "*.h", "README.md"],
        "sensor.rules": ["*.yaml"],
    },
    # BCC is a system package (Debian/Ubuntu python3-bpfcc, Fedora python3-bcc).
    # The PyPI project named "bcc" is unrelated: never list it here.
    install_requires=[
        "numpy>=1.24,<3",
        "numba>=0.59,<0.70",
        "msgpack>=1.0,<2",
        "structlog>=23.1,<27",
        "pyroute2>=0.7.9,<0.10",
        "click>=8.1,<9",
        "PyYAML>=6.0,<7",
    ],
    extras_require={
        "test": ["pytest>=7.4,<10", "hypothesis>=6.80,<7", "setuptools>=70.1"],
        "bench": ["matplotlib>=3.7,<4", "py-spy>=0.3.14,<0.5"],
    },
    entry_points={"console_scripts": ["mayfly=sensor.cli:main"]},
)
