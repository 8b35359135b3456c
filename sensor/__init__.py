"""Mayfly: an eBPF runtime security sensor for short-lived containers.

Importing this package needs no BCC and no root: records, sinks, rule files and
replay work anywhere. Only `Sensor.start()` loads BPF programs.
"""

from sensor.bpf_program import BccMissing, ProgramConfig
from sensor.records import RECORD_SCHEMA_VERSION, Record, read_stream
from sensor.sensor import Sensor
from sensor.sinks import ConsoleSink, FileSink, Sink

__version__ = "0.1.0"

__all__ = ["BccMissing", "ConsoleSink", "FileSink", "ProgramConfig", "RECORD_SCHEMA_VERSION", "Record",
           "Sensor", "Sink", "read_stream", "__version__"]
