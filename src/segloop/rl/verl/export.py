"""A manifest (or any ``--data`` spec, synthetic scenes included) as verl's
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

import json
from pathlib import Path
from typing import Any

from segloop.rl.verl.episode import AGENT_NAME, DATA_SOURCE
from segloop.tools.encoding import encode_png


def row_of(item: Any, index: int, split: str, max_side: int, max_turns: int) -> dict[str, Any]:
    """The parquet row of one ``rl.rollout.Item``."""
    from segloop.agent import prompts
    from segloop.tools.masks import rle_encode
    from segloop.tools.views import full_view

    height, width = item.image.shape[:2]
    view = full_view(width, height, max_side)
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "system", "content": prompts.system_prompt("pixels", max_turns)},
                   {"role": "user", "content": "<image>" + prompts.first_user_text(item.sample.query, view)}],
        "images": [{"bytes": encode_png(item.image)}],
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

    from segloop.data.specs import load_items

    rows = [row_of(item, i, split, max_side, max_turns) for i, item in enumerate(load_items(spec))]
    if not rows:
        raise ValueError(f"{spec}: no samples")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out)
    return len(rows)
