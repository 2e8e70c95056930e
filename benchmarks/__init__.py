"""Benchmarks of evopop: ``python -m benchmarks.bench_NAME`` from the repository root; see README.md."""
