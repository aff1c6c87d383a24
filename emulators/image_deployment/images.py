"""Real, decodable PNG/JPEG images of the requested size, with the service's byte sizes.

The picture is cheap to draw and compresses well (gradients and flat shapes derived from the prompt),
so the encoded image is small; it is then padded up to the byte size the real service would send
with an incompressible ancillary chunk (PNG, `raNd`, which decoders skip) or COM segments (JPEG).
Each call's images carry its apim-request-id (`stamp.py`), so no two calls send the same bytes.
`--payload-scale` scales that target, so small values shrink bytes but never dimensions.
Partial images are the same scene drawn on a coarse grid and enlarged with nearest-neighbour, so
each is visibly blockier than the next and than the final.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image, ImageDraw

from .stamp import JpegCanvas, PngCanvas, encode_jpeg

Canvas = PngCanvas | JpegCanvas

# Bytes per pixel of what the service sends (PNG ≈ 4.6 MB at 2048² high).
_BYTES_PER_PIXEL = {
    "png": {"low": 0.45, "medium": 0.7, "high": 1.1},
    "jpeg": {"low": 0.08, "medium": 0.16, "high": 0.3},
}
PARTIAL_SHARE = 0.5  # a partial is about half the final's bytes


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


def canvas(key: ImageKey, payload_scale: float) -> Canvas:
    """The picture drawn and (PNG) compressed once, ready to be stamped per call."""
    scene = draw(key)
    target = target_bytes(key, payload_scale)
    seed = _rng(key).getrandbits(64)
    if key.output_format == "png":
        return PngCanvas.of(scene, target, seed)
    rgb = scene.convert("RGB")
    quality = 85 if key.compression is None else max(5, min(95, key.compression))
    if len(encode_jpeg(rgb, quality)) > target:
        quality = 20  # a small payload scale asks for fewer bytes
    return JpegCanvas(rgb, quality, target, seed)


def encode(key: ImageKey, payload_scale: float, call_id: str | None = None) -> bytes:
    """The encoded image; `call_id` (the call's apim-request-id) is written into it when given."""
    return canvas(key, payload_scale).render(call_id)


class ImageCache:
    """Canvases by key, bounded in bytes: the same prompt and size is drawn once, stamped per call."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self._max = max_bytes
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[ImageKey, float], Canvas] = OrderedDict()
        self._size = 0

    def get(self, key: ImageKey, payload_scale: float, call_id: str | None = None) -> bytes:
        """The encoded image stamped with `call_id`; the scale is part of the key because the
        control API can change it."""
        entry = (key, payload_scale)
        with self._lock:
            found = self._items.get(entry)
            if found is not None:
                self._items.move_to_end(entry)
        if found is None:
            found = canvas(key, payload_scale)  # outside the lock: other streams keep going
            with self._lock:
                if entry not in self._items:
                    self._items[entry] = found
                    self._size += found.size
                while self._size > self._max and len(self._items) > 1:
                    _, dropped = self._items.popitem(last=False)
                    self._size -= dropped.size
        return found.render(call_id)
