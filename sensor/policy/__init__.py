"""Placement policy and the spawn gate: may this workload run here, decided on this
host's facts before the container's entrypoint runs (docs/policy.md)."""
