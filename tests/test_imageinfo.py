"""The hand-written PNG/JPEG header parser against images Pillow writes."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from shared.records.imageinfo import (
    UnknownImageFormat,
    content_type,
    extension,
    image_dimensions,
    image_format,
    normalise_format,
)

SIZES = [(1, 1), (16, 16), (1024, 1024), (1536, 1024), (1024, 1536), (3840, 2160), (17, 4001)]


def encode(size: tuple[int, int], fmt: str, mode: str = "RGB", **options: Any) -> bytes:
    image = Image.new(mode, size, color=0)
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_png_sizes_and_modes(size: tuple[int, int], mode: str) -> None:
    data = encode(size, "PNG", mode)
    assert image_format(data) == "png"
    assert image_dimensions(data) == size


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"progressive": True},
        {"optimize": True, "quality": 40},
        {"progressive": True, "optimize": True, "subsampling": 0},
    ],
    ids=["baseline", "progressive", "optimized", "progressive-444"],
)
def test_jpeg_sizes_and_encodings(size: tuple[int, int], options: dict[str, Any]) -> None:
    data = encode(size, "JPEG", **options)
    assert image_format(data) == "jpeg"
    assert image_dimensions(data) == size


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_jpeg_grayscale_and_cmyk(mode: str) -> None:
    assert image_dimensions(encode((300, 200), "JPEG", mode)) == (300, 200)


def test_jpeg_with_exif_and_icc_segments_before_the_frame() -> None:
    exif = Image.Exif()
    exif[0x010E] = "x" * 5000  # ImageDescription: a long APP1 segment to skip over
    data = encode((640, 480), "JPEG", exif=exif.tobytes(), icc_profile=b"\0" * 3000)
    assert data.find(b"\xff\xc0") > 8000  # the frame header sits behind both segments
    assert image_dimensions(data) == (640, 480)


def test_jpeg_fill_bytes_before_a_marker_are_skipped() -> None:
    data = encode((320, 240), "JPEG")
    # Insert 0xFF fill bytes between SOI and the first marker, which the standard allows.
    padded = data[:2] + b"\xff\xff\xff" + data[2:]
    assert image_dimensions(padded) == (320, 240)


def test_jpeg_header_only_is_enough() -> None:
    data = encode((800, 600), "JPEG", progressive=True)
    sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    assert sof > 0
    assert image_dimensions(data[: sof + 9]) == (800, 600)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GIF89a\x01\x00\x01\x00",
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",
        b"\x89PNG\r\n\x1a\n",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIDAT\x00\x00\x00\x01\x00\x00\x00\x01",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00\x00\x00\x00\x00\x00\x01",
        b"\xff\xd8",
        b"\xff\xd8\xff\xd9",
        b"\xff\xd8\xff\xe0\x00",
        b"\xff\xd8\x00\x00",
        b"\xff\xd8\xff\xe0\x00\x01",
    ],
    ids=[
        "empty",
        "gif",
        "webp",
        "png-signature-only",
        "png-idat-first",
        "png-zero-width",
        "jpeg-soi-only",
        "jpeg-eoi-first",
        "jpeg-cut-in-length",
        "jpeg-no-marker",
        "jpeg-bad-length",
    ],
)
def test_unreadable_headers_raise(data: bytes) -> None:
    with pytest.raises(UnknownImageFormat):
        image_dimensions(data)


def test_truncated_jpeg_before_frame_raises() -> None:
    data = encode((64, 64), "JPEG", icc_profile=b"\0" * 2000)
    sof = data.find(b"\xff\xc0")
    with pytest.raises(UnknownImageFormat, match="frame header"):
        image_dimensions(data[: sof + 4])


def test_jpeg_scan_before_frame_raises() -> None:
    with pytest.raises(UnknownImageFormat, match="DA"):
        image_dimensions(b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 6)


def test_unknown_format_is_a_value_error() -> None:
    assert issubclass(UnknownImageFormat, ValueError)


def test_content_types_and_extensions() -> None:
    assert content_type("png") == "image/png"
    assert content_type("jpeg") == "image/jpeg"
    assert extension("png") == "png"
    assert extension("jpeg") == "jpg"
    assert normalise_format("JPG") == "jpeg"
    with pytest.raises(UnknownImageFormat, match="webp"):
        content_type("webp")
    with pytest.raises(UnknownImageFormat):
        extension("gif")
