"""Mayfly: an eBPF runtime security sensor for short-lived containers.

Importing this package needs no BCC and no root: records, sinks, rule files and
replay work anywhere. Only `Sensor.start()` loads BPF programs. The names below are
imported when first used, so that a tool reading records (or a test rig) does not map
Numba's and BCC's compilers, about 150 MiB, into its process.
"""

from importlib import import_module

__version__ = "0.1.0"

_WHERE = {"BccMissing": "sensor.kernel.bpf_program", "ProgramConfig": "sensor.kernel.bpf_program",
          "RECORD_SCHEMA_VERSION": "sensor.records", "Record": "sensor.records", "read_stream": "sensor.records",
          "ALL": "sensor.sensor", "Sensor": "sensor.sensor",
          "CallbackSink": "sensor.output.sinks", "FileSink": "sensor.output.sinks", "Sink": "sensor.output.sinks",
          "StreamSink": "sensor.output.sinks"}

__all__ = sorted(_WHERE) + ["__version__"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'sensor' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value  # found once
    return value


def __dir__() -> list[str]:
    return __all__
