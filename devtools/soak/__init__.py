"""Crash soak (issue 7): many requests through two host instances while things break underneath.

Two host stand-ins consume one queue; the emulator fails large images mid-stream and answers 429s;
one host is killed with SIGKILL mid-stream (twice) and restarted; the soak's own on-disk Azurite is
stopped and restarted. At the end, invariants over what Storage, the emulator's request log and a
tap on every blob write say: see `checks.py`. `python -m devtools.soak` prints the counts.
"""

from devtools.soak.config import CI, FULL, SoakConfig
from devtools.soak.run import SoakResult, run_soak

__all__ = ["CI", "FULL", "SoakConfig", "SoakResult", "run_soak"]
