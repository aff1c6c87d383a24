"""`python -m devtools azurite`: run Azurite in the foreground (in memory) until Ctrl-C."""

from __future__ import annotations

import sys

from devtools.azurite import running, start_azurite


def main(argv: list[str]) -> int:
    if argv != ["azurite"]:
        print("usage: python -m devtools azurite", file=sys.stderr)
        return 2
    if running():
        print("Azurite is already listening on 127.0.0.1:10000-10002", file=sys.stderr)
        return 0
    service = start_azurite()
    print(f"Azurite running (pid {service.pid}); Ctrl-C stops it", file=sys.stderr)
    try:
        service.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
