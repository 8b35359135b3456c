"""Evidence: the cases of containers, kept in a store by their value under a byte
budget (docs/cases.md)."""
