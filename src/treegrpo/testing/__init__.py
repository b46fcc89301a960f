"""Tiny random-config models and test doubles, for tests and benchmarks; no weights."""
