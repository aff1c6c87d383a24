"""Every image a call draws carries that call's apim-request-id, in its metadata and its pixels.

Why: the service never sends the same bytes twice, so a client that generated an image twice stored
one of two different pictures; an emulator drawing identical bytes for the same prompt would hide
that. The id goes into a PNG `tEXt` chunk (keyword `apim-request-id`) or a JPEG COM segment
(`apim-request-id=<id>`), and a strip of black and white cells across the top rows spells the first
128 bits of its sha256, so the difference is visible too.

Keeping it cheap: drawing and compressing a 2048² PNG costs a few hundred milliseconds, too much per
call. A `PngCanvas` holds everything below the strip already filtered and deflated; a call deflates
only its strip (a few rows) and splices it in front, which a zlib stream allows after a full flush
(nothing later refers back across it), combining the Adler-32 checksums arithmetically. A JPEG is
re-encoded from the cached scene instead: libjpeg is fast, and splicing entropy-coded data is not.
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
import zlib
from dataclasses import dataclass

from PIL import Image, ImageChops

STAMP_ROWS = 8
STAMP_BITS = 128
PNG_KEYWORD = b"apim-request-id"
JPEG_PREFIX = b"apim-request-id="
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_PAD_TYPE = b"raNd"  # ancillary, private, safe to copy
_JPEG_SEGMENT = 65_533
_ADLER_BASE = 65_521


def stamp_bits(call_id: str) -> list[bool]:
    digest = hashlib.sha256(call_id.encode()).digest()
    return [bool(digest[i // 8] >> (7 - i % 8) & 1) for i in range(STAMP_BITS)]


def stamp_cell(width: int) -> int:
    """Width of one bit's cell: the strip spans the image's width (or all of it, if narrower)."""
    return max(1, width // STAMP_BITS)


def draw_stamp(strip: Image.Image, call_id: str) -> Image.Image:
    """`strip` (the top rows) with the id's bits painted over it, black for 0 and white for 1."""
    cell = stamp_cell(strip.width)
    bits = stamp_bits(call_id)[: strip.width // cell]
    row = Image.frombytes("L", (len(bits), 1), bytes(255 if b else 0 for b in bits))
    cells = row.resize((len(bits) * cell, strip.height), Image.Resampling.NEAREST)
    stamped = strip.copy()
    stamped.paste(cells.convert(strip.mode), (0, 0))
    return stamped


def adler32_combine(first: int, second: int, second_len: int) -> int:
    """The Adler-32 of two byte strings joined, from theirs (zlib's `adler32_combine`)."""
    rem = second_len % _ADLER_BASE
    low = ((first & 0xFFFF) + (second & 0xFFFF) + _ADLER_BASE - 1) % _ADLER_BASE
    high = (
        rem * (first & 0xFFFF) + (first >> 16) + (second >> 16) + _ADLER_BASE - rem
    ) % _ADLER_BASE
    return low | high << 16


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _scanlines_up(image: Image.Image, top: int) -> bytes:
    """Rows `top`.. as PNG scanlines: the first unfiltered, the others with the Up filter (a
    gradient's rows differ little), so they decode without the rows above `top`."""
    width, height = image.size
    if top >= height:
        return b""
    first = image.crop((0, top, width, top + 1)).tobytes()
    if top + 1 >= height:
        return b"\x00" + first
    above = image.crop((0, top, width, height - 1))
    diff = ImageChops.subtract_modulo(image.crop((0, top + 1, width, height)), above).tobytes()
    size = len(first)
    rows = [b"\x00" + first]
    rows += [b"\x02" + diff[i : i + size] for i in range(0, len(diff), size)]
    return b"".join(rows)


@dataclass(frozen=True, slots=True)
class PngCanvas:
    head: bytes  # signature and IHDR
    top: Image.Image  # the rows the stamp covers, unstamped
    rest: bytes  # the other rows, deflated (raw deflate, final block included)
    rest_adler: int
    rest_len: int
    target: int  # the byte size the service would send
    seed: int  # of the pad's bytes

    @classmethod
    def of(cls, scene: Image.Image, target: int, seed: int) -> PngCanvas:
        width, height = scene.size
        colour_type = 6 if scene.mode == "RGBA" else 2
        head = _PNG_SIGNATURE + _chunk(
            b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
        )
        rows = min(STAMP_ROWS, height)
        rest = _scanlines_up(scene, rows)
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        deflated = compressor.compress(rest) + compressor.flush() if rest else b""
        top = scene.crop((0, 0, width, rows))
        return cls(head, top, deflated, zlib.adler32(rest), len(rest), target, seed)

    @property
    def size(self) -> int:
        return len(self.rest) + len(self.top.tobytes())

    def render(self, call_id: str | None) -> bytes:
        strip = self.top if call_id is None else draw_stamp(self.top, call_id)
        raw, width = strip.tobytes(), len(strip.tobytes()) // max(1, strip.height)
        top = b"".join(b"\x00" + raw[i : i + width] for i in range(0, len(raw), width))
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        ending = zlib.Z_FULL_FLUSH if self.rest_len else zlib.Z_FINISH
        deflated = compressor.compress(top) + compressor.flush(ending)
        checksum = adler32_combine(zlib.adler32(top), self.rest_adler, self.rest_len)
        idat = b"\x78\x9c" + deflated + self.rest + struct.pack(">I", checksum)
        text = b"" if call_id is None else _chunk(b"tEXt", PNG_KEYWORD + b"\0" + call_id.encode())
        body = self.head + text + _chunk(b"IDAT", idat)
        end = _chunk(b"IEND", b"")
        pad = self.target - len(body) - len(end)
        if pad > 12:
            body += _chunk(_PNG_PAD_TYPE, random.Random(self.seed).randbytes(pad - 12))
        return body + end


@dataclass(frozen=True, slots=True)
class JpegCanvas:
    scene: Image.Image  # RGB
    quality: int  # what brought the picture near its target (a small payload scale asks less)
    target: int
    seed: int

    @property
    def size(self) -> int:
        return self.scene.width * self.scene.height * 3

    def render(self, call_id: str | None) -> bytes:
        scene = self.scene
        if call_id is not None:
            scene = scene.copy()
            rows = min(STAMP_ROWS * 2, scene.height)  # a JPEG block row, so the cells stay crisp
            scene.paste(draw_stamp(scene.crop((0, 0, scene.width, rows)), call_id), (0, 0))
        encoded = encode_jpeg(scene, self.quality)
        comment = b"" if call_id is None else JPEG_PREFIX + call_id.encode()
        segments = [_com(comment)] if comment else []
        pad = self.target - len(encoded) - sum(len(s) for s in segments)
        rng = random.Random(self.seed)
        while pad > 4:
            size = min(_JPEG_SEGMENT, pad - 4)
            segments.append(_com(rng.randbytes(size)))
            pad -= size + 4
        return encoded[:2] + b"".join(segments) + encoded[2:]


def _com(data: bytes) -> bytes:
    return b"\xff\xfe" + struct.pack(">H", len(data) + 2) + data


def encode_jpeg(scene: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    scene.save(out, "JPEG", quality=quality)
    return out.getvalue()


def embedded_id(data: bytes) -> str | None:
    """The apim-request-id a PNG's `tEXt` or a JPEG's COM segment names, if any."""
    if data.startswith(_PNG_SIGNATURE):
        offset = len(_PNG_SIGNATURE)
        while offset + 8 <= len(data):
            (length,) = struct.unpack(">I", data[offset : offset + 4])
            kind = data[offset + 4 : offset + 8]
            body = data[offset + 8 : offset + 8 + length]
            if kind == b"tEXt" and body.startswith(PNG_KEYWORD + b"\0"):
                return body[len(PNG_KEYWORD) + 1 :].decode("latin-1")
            if kind in (b"IDAT", b"IEND"):
                return None
            offset += 12 + length
        return None
    offset = 2
    while offset + 4 <= len(data) and data[offset] == 0xFF and data[offset + 1] == 0xFE:
        (length,) = struct.unpack(">H", data[offset + 2 : offset + 4])
        body = data[offset + 4 : offset + 2 + length]
        if body.startswith(JPEG_PREFIX):
            return body[len(JPEG_PREFIX) :].decode("latin-1")
        offset += 2 + length
    return None
