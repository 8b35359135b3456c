"""Package data: the built-in rule files. No Python here."""
