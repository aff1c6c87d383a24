"""Development-only helpers: start and stop local services (Azurite, emulators, hosts).

Used by tests, `make demo`, benchmarks and the soak run; never deployed.
"""
