"""Package data: the C programs and shared headers (ebpf/README.md). No Python here."""
