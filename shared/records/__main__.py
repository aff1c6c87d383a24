"""`python -m shared.records [DIR]` writes the output documents' JSON Schemas (default: schemas/).

`--check` writes nothing and exits 1 naming the files that are stale.
"""

import argparse
import sys
from pathlib import Path

from shared.records.schemas import stale_files, write_schemas

parser = argparse.ArgumentParser(prog="python -m shared.records", description=__doc__)
parser.add_argument("dir", nargs="?", default="schemas", type=Path, help="where the files go")
parser.add_argument("--check", action="store_true", help="only report stale files")
args = parser.parse_args()
if args.check:
    stale = stale_files(args.dir)
    for name in stale:
        print(
            f"{args.dir / name} is stale: run `python -m shared.records {args.dir}`",
            file=sys.stderr,
        )
    sys.exit(1 if stale else 0)
for path in write_schemas(args.dir):
    print(path)
