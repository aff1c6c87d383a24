"""Smoke test of bench.sse_decoding: a tiny stream through the project's decoder and the floor.

Not a speed test: nothing here asserts a time. It checks that the benchmark runs end to end (loopback
server, child processes, table) and that its sha256 check is real, so a broken decoder cannot get a
time in BENCHMARKS.md.
"""

from __future__ import annotations

import io

from bench.sse_decoding import (
    Config,
    ImageStream,
    StreamServer,
    build_stream,
    measure_row,
    run,
)

TINY_MIB = 0.1


def test_project_decoder_and_floor_decode_every_image_and_print_a_table() -> None:
    out = io.StringIO()
    report = run(
        Config(sizes=(TINY_MIB,), decoders=("project", "floor"), repeat=1, limit_s=30.0), out
    )

    assert [(r.decoder, r.status) for r in report.rows] == [("floor", "ok"), ("project", "ok")]
    assert all(r.seconds is not None and r.seconds > 0 for r in report.rows)
    assert all(r.peak_mib is not None for r in report.rows)
    assert len(report.targets) == 1 and report.targets[0].size_mib == TINY_MIB
    text = out.getvalue()
    assert "| image " in text and "project: shared.azure_openai.sse via ImageApi" in text
    assert f"target at {TINY_MIB:g} MiB" in text


def test_a_row_whose_images_differ_gets_no_time() -> None:
    stream = build_stream(int(TINY_MIB * 1024 * 1024), seed=1)
    # The body is right but the expected digests are in the wrong order: the decoder must lose.
    wrong = ImageStream(stream.body, tuple(reversed(stream.sha256s)), stream.image_bytes)
    with StreamServer() as server:
        server.body = stream.body
        row = measure_row(server.url, "floor", wrong, Config(repeat=1, limit_s=30.0), TINY_MIB)

    assert row.status.startswith("WRONG")
    assert row.seconds is None and not row.ok


def test_stream_has_three_partials_and_one_completed_event() -> None:
    stream = build_stream(1000, seed=2)

    assert stream.body.count(b"event: image_generation.partial_image\n") == 3
    assert stream.body.count(b"event: image_generation.completed\n") == 1
    assert stream.body.count(b"\ndata: {") == 4 and stream.body.endswith(b"\n\n")
    assert len(set(stream.sha256s)) == 4


# --- benchmarks 2-4: the real stack, tiny loads ------------------------------------------------
# Each starts its own emulator and host on free ports against the session's Azurite, with its own
# queue and containers. Nothing asserts a speed: only that every request finished and was counted.


def test_percentile_interpolates_and_iso_stamps_parse() -> None:
    from bench._common import epoch_from_iso, percentile

    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.95) == 4.8
    assert epoch_from_iso("1970-01-01T00:00:01.250Z") == 1.25


def test_end_to_end_times_every_request(azurite_connection_string: str) -> None:
    from bench.end_to_end import Config, run

    out = io.StringIO()
    report = run(
        Config(
            requests=3, image_mib=0.05, connection_string=azurite_connection_string, timeout_s=40
        ),
        out,
    )

    assert len(report.timings) == 3 and all(t.succeeded for t in report.timings)
    assert all(t.attempts == 1 and 0 < t.in_calls_s < t.latency_s for t in report.timings)
    assert 0 < report.outside_share < 1 and report.requests_per_s > 0
    assert 0.04 < report.image_bytes / (1024 * 1024) < 0.06  # the payload scale hit 0.05 MiB
    assert "req/s" in out.getvalue() and "queue wait" in out.getvalue()


def test_quota_use_counts_completions_and_429s(azurite_connection_string: str) -> None:
    from bench.quota_use import Config, run

    out = io.StringIO()
    (report,) = run(
        Config(
            requests=14,
            workloads=(("1024x640", "low"),),
            scopes=("process",),
            payload_scale=0.05,
            connection_string=azurite_connection_string,
            timeout_s=40,
        ),
        out,
    )

    assert report.succeeded == 14 and len(report.completions) == 14
    # Every call is in the emulator's log: 14 that succeeded plus each 429 the product recorded.
    assert sum(report.emulator_statuses.values()) == 14 + report.attempts_rate_limited
    assert report.emulator_statuses.get(429, 0) == report.attempts_rate_limited
    # 14 requests at 10 a window: the last 4 must wait for the first sends to leave the window.
    assert report.completions[-1] - report.completions[0] > 0.5 * report.window_s
    assert report.use > 0 and "use of limit" in out.getvalue()


def test_memory_reads_the_host_peak(azurite_connection_string: str) -> None:
    from bench.memory import Config, run

    out = io.StringIO()
    report = run(
        Config(
            requests=2,
            size="1024x640",
            quality="low",
            partial_images=1,
            payload_scale=0.2,
            time_scale=0.001,
            connection_string=azurite_connection_string,
            timeout_s=40,
        ),
        out,
    )

    assert report.succeeded == 2 and report.image_bytes > 0
    assert report.peak_kib >= report.baseline_kib > 0
    assert report.peak_kib >= report.sampled_peak_kib > 0
    assert "peak (VmHWM) MiB" in out.getvalue()
