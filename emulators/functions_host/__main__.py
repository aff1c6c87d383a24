"""`python -m emulators.functions_host`: see `cli.py`."""

from emulators.functions_host.cli import run

if __name__ == "__main__":
    run()
