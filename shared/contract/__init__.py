"""The queue message (contract v1): the request model, body decoding, the JSON Schema.

Producers import this package alone; it depends on nothing else in `shared`.
"""
