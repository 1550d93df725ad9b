"""Benchmarks: `python -m bench` (see bench/pipeline_bench.py). Printed tables, never test assertions."""
