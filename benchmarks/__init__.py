"""Benchmarks (`make bench`): tables written into docs/benchmarks.md and docs/estimators.md."""
