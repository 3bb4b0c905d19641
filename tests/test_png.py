"""The fast PNG encoder: lossless for any RGB array, readable by a standard decoder, clear on bad input."""

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from segloop.tools.encoding import data_url, decode_data_url, encode_png


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return np.asarray(image)


@settings(max_examples=40, deadline=None)
@given(height=st.integers(1, 40), width=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_any_rgb_array_round_trips_exactly(height: int, width: int, seed: int) -> None:
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    assert np.array_equal(_decode(encode_png(array)), array)


def test_views_of_larger_arrays_and_data_urls_round_trip() -> None:
    ramp = np.linspace(0, 255, 300, dtype=np.float32)
    scene = np.stack([np.add.outer(ramp[:200], ramp) / 2] * 3, axis=-1).astype(np.uint8)
    crop = scene[10:150:2, 5:290]  # strided, not contiguous
    assert np.array_equal(_decode(encode_png(crop)), crop)
    url = data_url(scene)
    assert url.startswith("data:image/png;base64,")
    assert np.array_equal(decode_data_url(url), scene)


def test_grayscale_round_trips_and_lossy_formats_decode() -> None:
    gray = np.random.default_rng(0).integers(0, 256, (17, 23), dtype=np.uint8)
    with Image.open(io.BytesIO(encode_png(gray))) as image:
        assert image.mode == "L" and np.array_equal(np.asarray(image), gray)
    smooth = np.stack([np.add.outer(np.arange(64), np.arange(64))] * 3, axis=-1).astype(np.uint8)
    for fmt in ("jpeg", "webp"):
        url = data_url(smooth, fmt, quality=90)
        assert url.startswith(f"data:image/{fmt};base64,")
        assert np.abs(decode_data_url(url).astype(int) - smooth).mean() < 3
    with pytest.raises(ValueError, match="quality"):
        data_url(smooth, "jpeg", quality=0)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.float32),
                                 np.zeros((0, 4, 3), np.uint8), np.zeros((4,), np.uint8)])
def test_non_image_input_is_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8 \\(H, W\\) or \\(H, W, 3\\)"):
        encode_png(bad)
