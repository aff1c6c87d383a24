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
    assert "| image " in text and "project: shared.sse via ImageApi" in text
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
