"""Benchmarks: speed, memory and quota use against the alternatives. Nothing here fails CI.

Each module is runnable with `python -m bench.<name>` and prints a table; BENCHMARKS.md records runs.
"""
