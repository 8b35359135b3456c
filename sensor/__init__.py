"""Mayfly: an eBPF runtime security sensor for short-lived containers.

Importing this package needs no BCC and no root: records, sinks, rule files and
replay work anywhere. Only `Sensor.start()` loads BPF programs.
"""

from sensor.kernel.bpf_program import BccMissing, ProgramConfig
from sensor.records import RECORD_SCHEMA_VERSION, Record, read_stream
from sensor.sensor import ALL, Sensor
from sensor.output.sinks import CallbackSink, FileSink, Sink, StreamSink

__version__ = "0.1.0"

__all__ = ["ALL", "BccMissing", "CallbackSink", "FileSink", "ProgramConfig", "RECORD_SCHEMA_VERSION", "Record",
           "Sensor", "Sink", "StreamSink", "read_stream", "__version__"]
