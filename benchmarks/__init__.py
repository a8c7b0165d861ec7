"""Runnable benchmarks: ``python -m benchmarks.bench_overhead`` (see README.md)."""
