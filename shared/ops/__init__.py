"""Operators' tools: the command line (`python -m shared.ops`), reports, poison requeue."""
