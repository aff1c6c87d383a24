"""The Azure OpenAI wire: one streaming image call, SSE decoding, response-header parsing.

Reports what happened; never decides what to do next (that is `shared.policy`).
"""
