"""``segloop bench tools``: what the tools cost on this machine.

- SAM 2 (transformers ``Sam2Model``) image encode vs one prompt, at hiera-tiny size and 1024 px input,
  with random weights (no checkpoint can be assumed; the cost does not depend on the weights' values).
- The overlay and the mask statistics of one turn on a 2048x2048 image, full view and zoomed.
- GrabCut on a small and a large region (first prompt, which includes the downscale, and a later one).
- ``--realdata MANIFEST``: GrabCut prompted with each sample's ground-truth box; gIoU and cIoU (ignore
  regions excluded). Manifest lines are ``{"id", "image", "mask", "ignore_mask"?}``, paths relative to it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from segloop.tools.images import ImageError
from segloop.tools.masks import Metrics, box_of, format_table, score_sample
from segloop.tools.overlay import mask_stats, render_overlay
from segloop.tools.segmenters import Prompt
from segloop.tools.segmenters.grabcut import GrabCutSegmenter
from segloop.tools.views import PixelBox, ViewStack


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per item; medians are reported")
    parser.add_argument("--skip-sam2", action="store_true", help="leave out the SAM 2 timings (they take ~30 s)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for SAM 2 (0: torch's default)")
    parser.add_argument("--realdata", type=Path, metavar="MANIFEST",
                        help="also score GrabCut from ground-truth boxes on this manifest")


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _report(item: str, seconds: float, note: str = "") -> None:
    print(f"{item:<52}{seconds * 1000:>10.1f} ms  {note}".rstrip(), flush=True)


def bench_sam2(repeats: int, threads: int) -> None:
    import torch
    from transformers import Sam2Config, Sam2Model

    from segloop.tools.segmenters.sam2_hf import Sam2Segmenter

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    segmenter = Sam2Segmenter(Sam2Model(Sam2Config()))  # the default config is hiera-tiny at 1024 px
    params = sum(p.numel() for p in segmenter.model.parameters()) / 1e6
    _report("sam2 build hiera-tiny (random weights)", time.perf_counter() - start,
            f"{params:.1f} M parameters, {torch.get_num_threads()} threads")
    image = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    region = PixelBox(0, 0, 1024, 1024)

    def encode() -> None:
        segmenter.clear_cache()
        segmenter.embedding(image, "bench", region)

    _report("sam2 image encode 1024x1024", _median_seconds(encode, repeats), "random weights; once per view")
    segmenter.embedding(image, "bench", region)
    prompts = {
        "box": Prompt(box=(300, 300, 700, 700)),
        "2 points": Prompt(points=((500, 500), (100, 100)), point_labels=(1, 0)),
        "box + point + previous mask": Prompt(box=(300, 300, 700, 700), points=((500, 500),), point_labels=(1,),
                                              mask=np.pad(np.ones((400, 400), bool), 312)),
    }
    for name, prompt in prompts.items():
        seconds = _median_seconds(lambda p=prompt: segmenter.segment(image, "bench", region, p), max(repeats, 5))
        _report(f"sam2 prompt ({name})", seconds, "cached embedding; includes upsampling the mask")


def bench_overlay(repeats: int) -> None:
    size = 2048
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), bool)
    mask[800:1200, 900:1300] = True
    stack = ViewStack(size, size)
    views = {"full view": stack.current, "zoomed view": stack.zoom_in([400, 350, 650, 600])}
    for name, view in views.items():
        def turn(v=view) -> None:
            render_overlay(image, v, mask, box=(900, 800, 1300, 1200), points=[(1100, 1000)], labels=[1])
            mask_stats(mask, v, (size, size)).describe()

        _report(f"overlay + stats, 2048x2048 image, {name}", _median_seconds(turn, max(repeats, 5)),
                f"{view.width}x{view.height} model frame")


def bench_grabcut(repeats: int) -> None:
    rng = np.random.default_rng(0)
    for side in (256, 2048):
        image = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
        image[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = (200, 40, 40)
        region = PixelBox(0, 0, side, side)
        prompt = Prompt(box=(side * 0.2, side * 0.2, side * 0.8, side * 0.8))
        segmenter = GrabCutSegmenter()

        def first(s=segmenter, i=image, r=region, p=prompt) -> None:
            s.clear_cache()
            s.segment(i, "bench", r, p)

        _report(f"grabcut {side}x{side} region, first prompt", _median_seconds(first, repeats),
                "includes the cached downscale of the view")
        _report(f"grabcut {side}x{side} region, later prompt",
                _median_seconds(lambda s=segmenter, i=image, r=region, p=prompt: s.segment(i, "bench", r, p),
                                repeats))


def score_grabcut_from_boxes(manifest: Path) -> Metrics:
    """GrabCut prompted with each sample's ground-truth box (the best box a policy could give)."""
    from segloop.data.readers import read_manifest

    metrics = Metrics()
    segmenter = GrabCutSegmenter()
    samples = read_manifest(manifest)
    for number, sample in enumerate(samples, 1):
        item = sample.load()
        image, gt, ignore = item.image, item.mask, item.ignore
        shape = image.shape[:2]
        box = box_of(gt)
        pred = np.zeros(shape, bool)
        start = time.perf_counter()
        if box is not None:
            region = PixelBox(0, 0, shape[1], shape[0])
            pred = segmenter.segment(image, sample.id, region, Prompt(box=tuple(float(v) for v in box)))
        score = score_sample(sample.id, pred, gt, ignore, kind=sample.kind)
        metrics.add(score)
        print(f"[{number}/{len(samples)}] {sample.id}: IoU {score.iou:.3f} "
              f"({time.perf_counter() - start:.2f} s)", flush=True)
    return metrics


def main(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        print("segloop bench tools: --repeats must be at least 1", file=sys.stderr)
        return 2
    if args.realdata is not None and not args.realdata.is_file():
        print(f"segloop bench tools: {args.realdata}: no such manifest file", file=sys.stderr)
        return 2
    print(f"{'item':<52}{'median':>13}", flush=True)
    bench_overlay(args.repeats)
    bench_grabcut(args.repeats)
    if not args.skip_sam2:
        bench_sam2(args.repeats, args.threads)
    if args.realdata is not None:
        try:
            metrics = score_grabcut_from_boxes(args.realdata)
        except (ImageError, ValueError, KeyError) as exc:
            print(f"segloop bench tools: {args.realdata}: {exc}", file=sys.stderr)
            return 1
        print("GrabCut from ground-truth boxes:")
        print(format_table(metrics.summary()))
    return 0
