"""What many test modules share: the tiny language model (built once per session), the segmenters, and the
stand-in OpenAI-compatible server (``support.openai_server``). Helpers that are not fixtures live in
``tests/support/``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.openai_server import OpenAIServer


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2.5-VL checkpoint (``segloop make-tiny``), built once and saved like a hub checkpoint."""
    import torch

    from segloop.policies.tiny import make_tiny

    torch.set_num_threads(1)
    return make_tiny(tmp_path_factory.mktemp("tiny") / "tiny", seed=0)


@pytest.fixture(scope="session")
def grabcut():
    """The weight-free segmenter the agent runs with by default."""
    from segloop.tools.segmenters import build_segmenter

    return build_segmenter("grabcut")


@pytest.fixture(scope="session")
def box_segmenter():
    """A segmenter that fills the prompt's box: masks follow prompts exactly, at no cost."""
    from segloop.tools.segmenters import build_segmenter

    return build_segmenter("box")


@pytest.fixture
def tiny_server(tiny_model: Path) -> Iterator[OpenAIServer]:
    """The stand-in server generating with the tiny model."""
    with OpenAIServer(model_dir=tiny_model) as server:
        yield server
