"""Image format and pixel size from the first bytes of a PNG or JPEG, parsed by hand.

The manifest records each image's width and height (docs/design.md §5). Pillow would do it, but it
is a large dependency for reading a dozen header bytes, so the deployed app reads the PNG IHDR chunk
and the JPEG SOFn segment itself. Only the header is read: a truncated body is not detected here.
Sizes are as stored; an EXIF orientation tag is not applied (gpt-image does not write one).
"""

from __future__ import annotations

import struct
from typing import Literal

ImageFormat = Literal["png", "jpeg"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"

_CONTENT_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg"}
_EXTENSIONS: dict[str, str] = {"png": "png", "jpeg": "jpg"}
_ALIASES: dict[str, ImageFormat] = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg"}

# Start-of-frame markers carry the frame size: baseline, extended, progressive and lossless, Huffman
# or arithmetic coded. C4 (DHT), C8 (reserved JPG) and CC (DAC) share the range but are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length field: TEM, RST0-7, SOI.
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8), 0xD8})
_SOS = 0xDA
_EOI = 0xD9


class UnknownImageFormat(ValueError):
    """The bytes are not a PNG or JPEG whose size can be read from its header."""


def normalise_format(fmt: str) -> ImageFormat:
    """`png`, `jpeg` (or `jpg`) as the contract's `output_format` spells it."""
    try:
        return _ALIASES[fmt.lower()]
    except KeyError:
        raise UnknownImageFormat(
            f"unsupported image format {fmt!r}: expected png or jpeg"
        ) from None


def content_type(fmt: str) -> str:
    return _CONTENT_TYPES[normalise_format(fmt)]


def extension(fmt: str) -> str:
    """The blob name's extension: `png` or `jpg` (docs/design.md §5), without the dot."""
    return _EXTENSIONS[normalise_format(fmt)]


def image_format(data: bytes) -> ImageFormat:
    """Which format the bytes are, by their signature."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SOI):
        return "jpeg"
    raise UnknownImageFormat(f"not a PNG or JPEG (starts with {data[:8].hex() or 'nothing'})")


def image_dimensions(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels of a PNG or JPEG."""
    if image_format(data) == "png":
        return _png_dimensions(data)
    return _jpeg_dimensions(data)


def _png_dimensions(data: bytes) -> tuple[int, int]:
    # The IHDR chunk must come first: length (13), type, then width and height as big-endian u32.
    header = data[len(PNG_SIGNATURE) : len(PNG_SIGNATURE) + 16]
    if len(header) < 16:
        raise UnknownImageFormat("PNG ends before its IHDR chunk")
    length, chunk_type, width, height = struct.unpack(">I4sII", header)
    if chunk_type != b"IHDR" or length != 13:
        raise UnknownImageFormat(f"PNG's first chunk is {chunk_type!r}, not IHDR")
    if width == 0 or height == 0:
        raise UnknownImageFormat(f"PNG IHDR has an empty size {width}x{height}")
    return width, height


def _jpeg_dimensions(data: bytes) -> tuple[int, int]:
    pos = len(JPEG_SOI)
    end = len(data)
    while pos < end:
        if data[pos] != 0xFF:
            raise UnknownImageFormat(f"JPEG has no marker at byte {pos}")
        # Any number of 0xFF fill bytes may precede a marker code.
        while pos < end and data[pos] == 0xFF:
            pos += 1
        if pos >= end:
            break
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE_MARKERS:
            continue
        if marker in (_EOI, _SOS):
            # A frame header always precedes the first scan; after it comes entropy-coded data.
            raise UnknownImageFormat(f"JPEG reaches marker {marker:02X} before a frame header")
        if pos + 2 > end:
            break
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            raise UnknownImageFormat(f"JPEG segment {marker:02X} has invalid length {length}")
        if marker in _SOF_MARKERS:
            # Segment: length, sample precision (1 byte), height, width (big-endian u16).
            if pos + 7 > end:
                break
            height, width = struct.unpack_from(">HH", data, pos + 3)
            if width == 0 or height == 0:
                # Height 0 defers to a DNL marker after the first scan; encoders do not do that.
                raise UnknownImageFormat(f"JPEG frame header has size {width}x{height}")
            return width, height
        pos += length
    raise UnknownImageFormat("JPEG ends before its frame header")
