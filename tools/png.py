"""Fast lossless PNG encoding of RGB views, for images sent to a model server every turn.

Pillow chooses a filter per row by trying all five (libpng's heuristic), which dominates its encoding time:
about 95 ms for a 1024-pixel photo view even at compression level 1. Here every row uses the "up" filter
(a vectorised difference with the row above, which suits photos and smooth renderings alike) and zlib runs at
level 1 with the run-length strategy: about 3x faster on photos (28 ms) and 2x on small renderings, for a
file some 8% larger. Both numpy and zlib release the GIL, so encodings in worker threads run in parallel.
Any PNG decoder reads the result; pixels round-trip exactly.
"""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_UP = 2


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(array: np.ndarray) -> bytes:
    """An RGB uint8 (H, W, 3) array as PNG bytes (8-bit truecolour, no interlace)."""
    array = np.asarray(array)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8 or 0 in array.shape:
        raise ValueError(f"a PNG view must be a non-empty uint8 (H, W, 3) array, got {array.dtype} {array.shape}")
    height, width = array.shape[:2]
    rows = array.reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = _FILTER_UP
    filtered[0, 1:] = rows[0]  # the row above the first is zeros
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 arithmetic wraps modulo 256, as PNG's does
    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    data = compressor.compress(filtered.data) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def png_data_url(array: np.ndarray) -> str:
    """The array as a base64 PNG data URL."""
    return "data:image/png;base64," + base64.b64encode(encode_png(array)).decode("ascii")
