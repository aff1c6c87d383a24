"""Emulator of an Azure OpenAI gpt-image deployment behind the gateway that fronts it.

It fails the way the real one does (see the seed support ticket): a 408 at the gateway timeout when
no byte has been sent, `event: error` frames mid-stream at large sizes, and 429s beyond the
deployment's requests per minute. Run it with `python -m emulators.image_deployment --help`.

It shares no code with the product on purpose: if both used one contract module, a bug in it would
pass every test.
"""
