"""Rate limits per deployment, 32 concurrent streams, and start-up options (flags and env vars)."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import pytest
import requests

from devtools.services import REPO_ROOT, free_port, http_ok, python_module, start, wait_until

API_VERSION = "2025-04-01-preview"
# The smallest size gpt-image-2 takes, at low quality: about 16 s of emulated work.
TINY = {"prompt": "a dot", "size": "1024x640", "quality": "low"}


def url(emulator: Any, deployment: str) -> str:
    path = f"/openai/deployments/{deployment}/images/generations?api-version={API_VERSION}"
    return emulator.url(path)


def post(emulator: Any, deployment: str, body: dict[str, Any] = TINY, **kw: Any) -> requests.Response:  # fmt: skip
    headers = kw.pop("headers", {"api-key": emulator.api_key})
    return requests.post(url(emulator, deployment), json=body, headers=headers, timeout=30, **kw)


@pytest.fixture(scope="module")
def limited(emulator_factory: Any) -> Any:
    # x0.05: the 60 s window is 3 s of wall time, room enough for three 16 s calls and slack. The
    # model is named, so these tests keep proving the sliding window whatever the default becomes.
    extra = ("--rate-model", "sliding", "--deployment", "a:rpm=2", "--deployment", "b:rpm=2")
    return emulator_factory(time_scale=0.05, extra_args=extra)


def test_sliding_window_429_then_admits_when_the_oldest_leaves(limited: Any) -> None:
    limited.reset()
    first, second = post(limited, "a"), post(limited, "a")
    assert [first.status_code, second.status_code] == [200, 200]
    assert [first.headers["x-ratelimit-remaining-requests"], second.headers["x-ratelimit-remaining-requests"]] == ["1", "0"]  # fmt: skip
    refused = post(limited, "a")
    assert refused.status_code == 429
    window_ms = 60_000 * limited.time_scale
    retry_ms = int(refused.headers["retry-after-ms"])
    assert 0 < retry_ms <= window_ms
    assert int(refused.headers["retry-after"]) == max(1, -(-retry_ms // 1000))
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"]  # the sliding model says when
    assert "retry after" in refused.json()["error"]["message"]
    assert post(limited, "b").status_code == 200  # another deployment, another window
    statuses: list[int] = []

    def admitted() -> bool:
        statuses.append(post(limited, "a").status_code)
        return statuses[-1] == 200

    wait_until(admitted, timeout=10, interval=retry_ms / 4000, what="a free slot in the window")
    assert set(statuses[:-1]) <= {429}
    outcomes = [r["outcome"] for r in limited.requests_log() if r["deployment"] == "a"]
    assert outcomes[:3] == ["succeeded", "succeeded", "rate_limited"]


def test_refusals_before_the_limit_do_not_count(limited: Any) -> None:
    limited.reset()
    assert post(limited, "a", headers={}).status_code == 401
    assert post(limited, "a", {"prompt": "x", "size": "15x15"}).status_code == 400
    assert post(limited, "a", {"prompt": "forbidden-content"}).status_code == 400
    assert post(limited, "nope").status_code == 404
    assert [post(limited, "a").status_code for _ in range(3)] == [200, 200, 429]


def test_a_rate_limited_request_leaves_the_script_alone(limited: Any) -> None:
    limited.reset()
    assert [post(limited, "a").status_code for _ in range(2)] == [200, 200]
    limited.script({"outcome": "http_error", "status": 503, "deployment": "a"})
    assert post(limited, "b").status_code == 200  # the entry names deployment a
    assert post(limited, "a").status_code == 429
    pending = requests.get(limited.url("/_emulator/script"), timeout=5).json()["pending"]
    assert [p["outcome"] for p in pending] == ["http_error"]
    limited.reset()  # empties the windows (and the script): script again, then it applies
    limited.script({"outcome": "http_error", "status": 503, "deployment": "a"})
    assert post(limited, "a").status_code == 503


def test_32_concurrent_streams(emulator_factory: Any) -> None:
    emulator = emulator_factory(extra_args=("--deployment", "gpt-image-2-1:rpm=1000"))
    count = 32
    barrier = threading.Barrier(count, timeout=30)
    results: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        body = {"prompt": f"stream {i}", "size": "1024x1024", "quality": "low", "stream": True}
        body["partial_images"] = 1
        with post(emulator, emulator.deployment, body, stream=True) as r:
            lines = r.iter_lines(decode_unicode=True)
            first = next(line for line in lines if line.startswith("event:"))
            # Every stream has its first event before any may read on: all 32 are open at once.
            barrier.wait()
            last = [line for line in lines if line.startswith("event:")][-1]
        with lock:
            results.append(f"{first} {last}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not barrier.broken
    assert (
        results
        == ["event: image_generation.partial_image event: image_generation.completed"] * count
    )


def test_bad_option_fails_with_one_line() -> None:
    for argv, name in ((["--time-scale", "-1"], "--time-scale"), (["--deployment", "x:rpm=no"], "--deployment")):  # fmt: skip
        done = subprocess.run(
            python_module("emulators.image_deployment", *argv),
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and name in done.stderr
    bad_env = subprocess.run(
        python_module("emulators.image_deployment"), cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=30, check=False, env={"EMULATOR_FAULT_RATE": "2", "PATH": ""},
    )  # fmt: skip
    assert bad_env.returncode == 2 and "--fault-rate" in bad_env.stderr


def test_options_from_environment_variables(tmp_path: Any) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "EMULATOR_PORT": str(port), "EMULATOR_API_KEY": "env-key", "EMULATOR_TIME_SCALE": "0.01",
        "EMULATOR_DEPLOYMENT": "east:rpm=1 west", "EMULATOR_FAULT_RATE": "0",
        "EMULATOR_PAYLOAD_SCALE": "0.01",
    }  # fmt: skip
    service = start(
        "env-emulator", [sys.executable, "-m", "emulators.image_deployment"],
        ready=lambda: http_ok(base + "/_emulator/health"), env=env,
        log_path=tmp_path / "emulator.log",
    )  # fmt: skip
    try:
        headers = {"api-key": "env-key"}
        east = f"{base}/openai/deployments/east/images/generations?api-version={API_VERSION}"
        r = requests.post(east, json=TINY, headers=headers, timeout=10)
        assert r.status_code == 200 and r.headers["x-ratelimit-limit-requests"] == "1"
        west = east.replace("/east/", "/west/")
        assert requests.post(west, json=TINY, headers=headers, timeout=10).status_code == 200
        other = east.replace("/east/", "/gpt-image-2-1/")
        assert requests.post(other, json=TINY, headers=headers, timeout=10).status_code == 404
    finally:
        service.stop()
