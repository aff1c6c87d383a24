"""`python -m emulators.image_deployment`: serve until Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType

from .api import State
from .config import ConfigError, load, parser
from .server import EmulatorServer


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        parser().print_help()
        return 0
    try:
        config = load(argv, os.environ)
    except ConfigError as error:
        print(f"emulator: error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    state = State.create(config)
    try:
        server = EmulatorServer((config.host, config.port), state)
    except OSError as error:
        print(
            f"emulator: error: cannot listen on {config.host}:{config.port}: {error}",
            file=sys.stderr,
        )
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        state.stopping.set()  # ends every wait, so streams finish at once
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    names = ", ".join(f"{d.name} ({d.model})" for d in config.deployments)
    logging.getLogger("emulator").info(
        "listening on http://%s:%s (deployments %s, time scale %s, fault rate %s, rate model %s)",
        host, port, names, config.time_scale, config.fault_rate, config.rate_model.value,
    )  # fmt: skip
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
