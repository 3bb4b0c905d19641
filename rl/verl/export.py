"""``segloop export-verl``: a manifest (or any ``--data`` spec, synthetic scenes included) as verl's
``RLHFDataset`` parquet, one row per sample, for the ``segloop_agent`` loop.

Columns (verl's names; ``data.prompt_key=prompt``, ``data.image_key=images``):
- ``data_source``: ``"segloop"``;
- ``prompt``: our system prompt and first user turn, the image as ``<image>`` (verl's dataset swaps in the
  image; it uses the text for its prompt-length filter, while the loop builds its own prompt through the
  ``Agent``, for the view it renders);
- ``images``: ``[{"bytes": PNG}]``, the full-resolution image (the loop renders its views from it);
- ``reward_model``: ``{"style": "rule", "ground_truth": COCO RLE as JSON}``;
- ``extra_info``: ``{"index", "id", "query", "kind", "ignore" (RLE JSON or ""), "split"}``;
- ``agent_name``: ``"segloop_agent"``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rl.verl.episode import AGENT_NAME, DATA_SOURCE


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def row_of(item: Any, index: int, split: str, max_side: int, max_turns: int) -> dict[str, Any]:
    """The parquet row of one ``rl.rollout.Item``."""
    from agent import prompts
    from tools.masks import rle_encode
    from tools.views import full_view

    height, width = item.image.shape[:2]
    view = full_view(width, height, max_side)
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "system", "content": prompts.system_prompt("pixels", max_turns)},
                   {"role": "user", "content": "<image>" + prompts.first_user_text(item.sample.query, view)}],
        "images": [{"bytes": _png(item.image)}],
        "reward_model": {"style": "rule", "ground_truth": json.dumps(rle_encode(item.mask))},
        "extra_info": {"index": index, "id": item.sample.id, "query": item.sample.query, "kind": item.sample.kind,
                       "ignore": json.dumps(rle_encode(item.ignore)) if item.ignore is not None else "",
                       "split": split},
        "agent_name": AGENT_NAME,
    }


def export(spec: str, out: str | Path, split: str = "train", max_side: int = 1024, max_turns: int = 6) -> int:
    """Write the rows of ``spec``'s samples to ``out``; returns how many."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rl.rollout import items

    rows = [row_of(item, i, split, max_side, max_turns) for i, item in enumerate(items(spec))]
    if not rows:
        raise ValueError(f"{spec}: no samples")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out)
    return len(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True,
                        help="a manifest (or any --data spec, e.g. synth:DIFFICULTY:SIZE:SEED:N)")
    parser.add_argument("--out", required=True, help="parquet file to write")
    parser.add_argument("--split", default="train", help="written into extra_info.split")
    parser.add_argument("--max-side", type=int, default=1024,
                        help="view size the prompt text describes (the loop's max_side)")
    parser.add_argument("--max-turns", type=int, default=6, help="turn budget the system prompt states")


def main(args: argparse.Namespace) -> int:
    try:
        n = export(args.data, args.out, args.split, args.max_side, args.max_turns)
    except (ValueError, OSError) as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    print(f"wrote {n} rows to {args.out}")
    return 0
