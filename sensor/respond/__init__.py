"""Response: what alerts do to their containers (kill, freeze, isolate, capture),
weighed against the workload's availability (docs/policy.md)."""
