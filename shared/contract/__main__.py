"""`python -m shared.contract > schemas/generation-request.schema.json` regenerates the schema."""

import sys

from shared.contract.request import schema_text

sys.stdout.write(schema_text())
