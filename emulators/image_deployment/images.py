"""Real, decodable PNG/JPEG images of the requested size, with the service's byte sizes.

The picture is cheap to draw and compresses well (gradients and flat shapes derived from the prompt),
so the encoded image is small; it is then padded up to the byte size the real service would send
with an incompressible ancillary chunk (PNG, `raNd`, which decoders skip) or COM segments (JPEG).
`--payload-scale` scales that target, so small values shrink bytes but never dimensions.
Partial images are the same scene drawn on a coarse grid and enlarged with nearest-neighbour, so
each is visibly blockier than the next and than the final.
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image, ImageDraw

# Bytes per pixel of what the service sends (PNG ≈ 4.6 MB at 2048² high).
_BYTES_PER_PIXEL = {
    "png": {"low": 0.45, "medium": 0.7, "high": 1.1},
    "jpeg": {"low": 0.08, "medium": 0.16, "high": 0.3},
}
PARTIAL_SHARE = 0.5  # a partial is about half the final's bytes
_PNG_PAD_TYPE = b"raNd"  # ancillary, private, safe to copy
_JPEG_SEGMENT = 65_533


@dataclass(frozen=True, slots=True)
class ImageKey:
    prompt: str
    width: int
    height: int
    output_format: str  # png | jpeg
    quality: str  # low | medium | high (auto resolved by the caller)
    transparent: bool
    stage: int  # 0.. = partial index; -1 = final
    variant: int = 0  # image k of a non-streaming n > 1 request
    compression: int | None = None


def block_size(key: ImageKey) -> int:
    """Grid cell of a partial: 1/16 of the long side for the first, halving for each next one."""
    if key.stage < 0:
        return 1
    return max(2, max(key.width, key.height) // (16 << key.stage))


def target_bytes(key: ImageKey, payload_scale: float) -> int:
    per_pixel = _BYTES_PER_PIXEL[key.output_format][key.quality]
    if key.output_format == "jpeg" and key.compression is not None:
        per_pixel *= 0.3 + 0.7 * key.compression / 100
    share = PARTIAL_SHARE if key.stage >= 0 else 1.0
    return int(key.width * key.height * per_pixel * share * payload_scale)


def _rng(key: ImageKey) -> random.Random:
    digest = hashlib.sha256(f"{key.prompt}\0{key.variant}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _colour(rng: random.Random, alpha: int | None) -> tuple[int, ...]:
    rgb = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    return rgb if alpha is None else (*rgb, alpha)


def draw(key: ImageKey) -> Image.Image:
    """The scene for this prompt (same for every stage), at `key`'s stage of detail."""
    rng = _rng(key)
    width, height = key.width, key.height
    mode = "RGBA" if key.transparent else "RGB"
    gradient = Image.linear_gradient("L").resize((width, height), Image.Resampling.BILINEAR)
    ends = [(rng.randrange(256), rng.randrange(256)) for _ in range(3)]
    # Smooth ramps (no wrap-around edges) keep the encoded picture small at low payload scales.
    channels = [gradient.point([lo + (hi - lo) * v // 255 for v in range(256)]) for lo, hi in ends]
    if key.transparent:
        channels.append(Image.new("L", (width, height), 0))
    scene = Image.merge(mode, channels)
    pen = ImageDraw.Draw(scene)
    alpha = 255 if key.transparent else None
    for _ in range(12):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = (
            x0 + rng.randrange(width // 8, width // 2),
            y0 + rng.randrange(height // 8, height // 2),
        )
        shape = pen.ellipse if rng.random() < 0.5 else pen.rectangle
        shape((x0, y0, x1, y1), fill=_colour(rng, alpha))
    # Fine lines only the final shows in full: the detail the partials lack.
    for _ in range(16):
        points = [(rng.randrange(width), rng.randrange(height)) for _ in range(2)]
        pen.line(points, fill=_colour(rng, alpha), width=1)
    cell = block_size(key)
    if cell > 1:
        grid = (max(1, width // cell), max(1, height // cell))
        scene = scene.resize(grid, Image.Resampling.BOX).resize(
            (width, height), Image.Resampling.NEAREST
        )
    return scene


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _pad_png(encoded: bytes, pad: int, rng: random.Random) -> bytes:
    if pad <= 12:
        return encoded
    iend = encoded.rindex(b"IEND") - 4
    return encoded[:iend] + _png_chunk(_PNG_PAD_TYPE, rng.randbytes(pad - 12)) + encoded[iend:]


def _pad_jpeg(encoded: bytes, pad: int, rng: random.Random) -> bytes:
    segments = []
    while pad > 4:
        size = min(_JPEG_SEGMENT, pad - 4)
        segments.append(b"\xff\xfe" + struct.pack(">H", size + 2) + rng.randbytes(size))
        pad -= size + 4
    return encoded[:2] + b"".join(segments) + encoded[2:]


def _encode_plain(scene: Image.Image, key: ImageKey, jpeg_quality: int) -> bytes:
    out = io.BytesIO()
    if key.output_format == "png":
        scene.save(out, "PNG", compress_level=6)
    else:
        scene.convert("RGB").save(out, "JPEG", quality=jpeg_quality)
    return out.getvalue()


def encode(key: ImageKey, payload_scale: float) -> bytes:
    scene = draw(key)
    target = target_bytes(key, payload_scale)
    quality = 85 if key.compression is None else max(5, min(95, key.compression))
    encoded = _encode_plain(scene, key, quality)
    if len(encoded) > target and key.output_format == "jpeg":
        encoded = _encode_plain(scene, key, 20)  # a small payload scale asks for fewer bytes
    pad = target - len(encoded)
    if pad <= 0:
        return encoded
    rng = _rng(key)
    return (
        _pad_png(encoded, pad, rng) if key.output_format == "png" else _pad_jpeg(encoded, pad, rng)
    )


class ImageCache:
    """Encoded images by key, bounded in bytes: the same prompt and size is drawn once."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self._max = max_bytes
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[ImageKey, float], bytes] = OrderedDict()
        self._size = 0

    def get(self, key: ImageKey, payload_scale: float) -> bytes:
        """The encoded image; the scale is part of the key because the control API can change it."""
        entry = (key, payload_scale)
        with self._lock:
            if entry in self._items:
                self._items.move_to_end(entry)
                return self._items[entry]
        data = encode(key, payload_scale)  # outside the lock: other streams keep going
        with self._lock:
            if entry not in self._items:
                self._items[entry] = data
                self._size += len(data)
            while self._size > self._max and len(self._items) > 1:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)
        return data
