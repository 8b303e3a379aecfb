"""Benchmarks: load tests and side-by-side speed comparisons."""
