"""Pure policy: the outcome table, the planner, backoff, the circuit breaker, rate limiting.

Values in, values out: no I/O, time and randomness passed in.
"""
