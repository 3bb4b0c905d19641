"""Segmenters: GrabCut on synthetic objects, the embedding cache, prompt validation, the SAM2 backends."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from segloop.tools.masks import iou
from segloop.tools.segmenters import Prompt, SegmenterError, build_segmenter
from segloop.tools.segmenters.grabcut import GrabCutSegmenter
from segloop.tools.views import PixelBox


def _disk_scene(width: int = 320, height: int = 240, centre: tuple[int, int] = (170, 120), radius: int = 50,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy grey background with a noisy red disk: a clear object with texture on both sides."""
    rng = np.random.default_rng(seed)
    image = rng.normal(120, 20, (height, width, 3)).clip(0, 255).astype(np.uint8)
    gt = np.zeros((height, width), np.uint8)
    cv2.circle(gt, centre, radius, 1, thickness=-1)
    gt = gt.astype(bool)
    image[gt] = (rng.normal(0, 15, (int(gt.sum()), 3)) + np.array([210, 50, 40])).clip(0, 255).astype(np.uint8)
    return image, gt


def _whole(image: np.ndarray) -> PixelBox:
    return PixelBox(0, 0, image.shape[1], image.shape[0])


def test_build_segmenter_names() -> None:
    assert isinstance(build_segmenter("grabcut"), GrabCutSegmenter)
    with pytest.raises(SegmenterError, match=r"unknown segmenter 'nope'.*grabcut"):
        build_segmenter("nope")
    with pytest.raises(SegmenterError, match="no model"):
        build_segmenter("grabcut", model="some/checkpoint")


def test_grabcut_finds_a_clear_object_from_its_box() -> None:
    image, gt = _disk_scene()
    mask = build_segmenter("grabcut").segment(image, "disk", _whole(image), Prompt(box=(110, 60, 230, 180)))
    assert mask.shape == gt.shape and mask.dtype == bool
    assert iou(mask, gt) > 0.8


def test_grabcut_from_a_positive_point_and_with_a_negative_point() -> None:
    image, gt = _disk_scene()
    seg = build_segmenter("grabcut")
    mask = seg.segment(image, "disk", _whole(image), Prompt(points=((170, 120),), point_labels=(1,)))
    assert iou(mask, gt) > 0.8
    # A negative point inside the object carves that place out.
    mask = seg.segment(image, "disk", _whole(image),
                       Prompt(box=(110, 60, 230, 180), points=((170, 120),), point_labels=(0,)))
    assert not mask[120, 170]


def test_grabcut_refines_from_the_previous_mask() -> None:
    image, gt = _disk_scene()
    rough = np.zeros_like(gt)
    rough[80:160, 130:210] = True  # a square roughly on the disk
    mask = build_segmenter("grabcut").segment(
        image, "disk", _whole(image), Prompt(box=(0, 0, 320, 240), mask=rough))
    assert iou(mask, gt) > iou(rough, gt) and iou(mask, gt) > 0.8


def test_grabcut_in_a_region_is_empty_outside_it() -> None:
    image, gt = _disk_scene(width=640, height=480, centre=(400, 300), radius=40)
    region = PixelBox(300, 200, 520, 400)
    mask = build_segmenter("grabcut").segment(image, "big", region, Prompt(box=(350, 250, 450, 350)))
    outside = mask.copy()
    outside[region.y1 : region.y2, region.x1 : region.x2] = False
    assert not outside.any()
    assert iou(mask, gt) > 0.8


def test_grabcut_on_a_large_region_works_on_a_downscaled_copy() -> None:
    image, gt = _disk_scene(width=1600, height=1200, centre=(800, 600), radius=250)
    seg = GrabCutSegmenter(work_side=256)
    small = seg.embedding(image, "large", _whole(image))
    assert max(small.shape[:2]) == 256
    mask = seg.segment(image, "large", _whole(image), Prompt(box=(500, 300, 1100, 900)))
    assert mask.shape == gt.shape and iou(mask, gt) > 0.8


def test_grabcut_small_target_in_a_large_view_keeps_full_resolution() -> None:
    # A 2400 px view would be downscaled 5x (the disk to ~5 px); the target's window is cut at full size.
    image, gt = _disk_scene(width=2400, height=1800, centre=(1500, 700), radius=14)
    mask = build_segmenter("grabcut").segment(image, "big", _whole(image), Prompt(box=(1484, 684, 1517, 717)))
    assert iou(mask, gt) > 0.8


def test_grabcut_tiny_region_and_box_do_not_crash() -> None:
    image, _ = _disk_scene()
    seg = build_segmenter("grabcut")
    mask = seg.segment(image, "disk", PixelBox(10, 10, 13, 12), Prompt(box=(10, 10, 13, 12)))
    assert mask[10:12, 10:13].all() and mask.sum() == 6
    mask = seg.segment(image, "disk", _whole(image), Prompt(box=(100, 100, 101.5, 101.5)))
    assert 0 < mask.sum() <= 9


def test_embedding_is_computed_once_per_image_and_region() -> None:
    image, _ = _disk_scene()
    seg = build_segmenter("grabcut", cache_size=2)
    region = _whole(image)
    for box in [(110, 60, 230, 180), (100, 50, 240, 190), (0, 0, 320, 240)]:
        seg.segment(image, "a", region, Prompt(box=box))
    assert seg.encoder_calls == 1
    seg.segment(image, "a", PixelBox(0, 0, 200, 200), Prompt(box=(10, 10, 100, 100)))
    seg.segment(image, "b", region, Prompt(box=(10, 10, 100, 100)))
    assert seg.encoder_calls == 3
    # The cache holds two entries: ("a", whole) was evicted first and costs an encode again.
    seg.segment(image, "a", region, Prompt(box=(10, 10, 100, 100)))
    assert seg.encoder_calls == 4


@pytest.mark.parametrize(
    ("region", "prompt", "message"),
    [
        (PixelBox(0, 0, 400, 100), Prompt(box=(0, 0, 10, 10)), "not inside"),
        (PixelBox(-5, 0, 100, 100), Prompt(box=(0, 0, 10, 10)), "not inside"),
        (PixelBox(50, 50, 50, 100), Prompt(box=(0, 0, 10, 10)), "not inside"),
        (PixelBox(0, 0, 100, 100), Prompt(box=(150, 150, 200, 200)), "does not overlap"),
        (PixelBox(0, 0, 100, 100), Prompt(box=(50, 50, 40, 60)), "empty"),
        (PixelBox(0, 0, 100, 100), Prompt(points=((150, 20),), point_labels=(1,)), "outside the region"),
        (PixelBox(0, 0, 100, 100), Prompt(points=((float("nan"), 20),), point_labels=(1,)), "outside the region"),
        (PixelBox(0, 0, 100, 100), Prompt(box=(0, 0, 10, 10), mask=np.zeros((5, 5), bool)), "previous mask"),
    ],
)
def test_bad_regions_and_prompts_are_clear_errors(region: PixelBox, prompt: Prompt, message: str) -> None:
    image, _ = _disk_scene()
    with pytest.raises(SegmenterError, match=message):
        build_segmenter("grabcut").segment(image, "x", region, prompt)


def test_prompt_itself_is_validated() -> None:
    with pytest.raises(SegmenterError, match="box, points"):
        Prompt()
    with pytest.raises(SegmenterError, match="one label per point"):
        Prompt(points=((1, 1),), point_labels=())
    with pytest.raises(SegmenterError, match=r"1 .target. or 0"):
        Prompt(points=((1, 1),), point_labels=(2,))


def test_points_on_the_region_edge_are_accepted() -> None:
    image, _ = _disk_scene()
    mask = build_segmenter("grabcut").segment(
        image, "disk", _whole(image), Prompt(points=((320, 240), (0, 0)), point_labels=(1, 0)))
    assert mask[239, 319]


# --- SAM2 through transformers: a tiny random model saved and loaded like a real checkpoint ---------

TINY_SIDE = 256


@pytest.fixture(scope="module")
def tiny_sam2_dir(tmp_path_factory: pytest.TempPathFactory):
    torch = pytest.importorskip("torch")
    from transformers import Sam2Config, Sam2Model

    torch.manual_seed(0)
    # Hiera with 16 channels at 256 px: 0.35 M parameters. The global-attention block must not be the
    # first of a stage (window size 0 -> ZeroDivisionError in transformers 5.23).
    config = Sam2Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam2_hiera_det_model", "hidden_size": 16, "num_attention_heads": 1,
                "blocks_per_stage": [1, 1, 2, 1], "embed_dim_per_stage": [16, 32, 64, 128],
                "num_attention_heads_per_stage": [1, 1, 1, 1], "window_size_per_stage": [8, 4, 4, 4],
                "global_attention_blocks": [3], "image_size": [TINY_SIDE, TINY_SIDE],
                "window_positional_embedding_background_size": [4, 4],
            },
            "backbone_channel_list": [128, 64, 32, 16],
            "backbone_feature_sizes": [[64, 64], [32, 32], [16, 16]],
            "fpn_hidden_size": 32,
        },
        prompt_encoder_config={"hidden_size": 32, "image_size": TINY_SIDE, "patch_size": 16},
        mask_decoder_config={"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
    )
    path = tmp_path_factory.mktemp("tiny_sam2")
    Sam2Model(config).save_pretrained(path)
    return path


def test_sam2_loads_by_path_and_encodes_once_per_view(tiny_sam2_dir) -> None:
    seg = build_segmenter("sam2", model=str(tiny_sam2_dir))
    assert seg.name == "sam2" and seg.input_size == TINY_SIDE
    image, _ = _disk_scene(width=500, height=300)
    region = PixelBox(100, 50, 400, 250)
    prompts = [
        Prompt(box=(150, 80, 300, 200)),
        Prompt(points=((200, 120), (120, 60)), point_labels=(1, 0)),
        Prompt(box=(150, 80, 300, 200), points=((200, 120),), point_labels=(1,)),
        Prompt(box=(50, 0, 450, 300)),  # partly outside the region: clipped
    ]
    masks = [seg.segment(image, "img", region, p) for p in prompts]
    previous = masks[0] if masks[0].any() else np.pad(np.ones((10, 10), bool), ((150, 140), (200, 290)))
    masks.append(seg.segment(image, "img", region, Prompt(box=(150, 80, 300, 200), mask=previous)))
    assert seg.encoder_calls == 1
    outside = np.ones((300, 500), bool)
    outside[50:250, 100:400] = False
    assert all(mask.any() for mask in masks)  # random weights still paint something to check
    for mask in masks:
        assert mask.shape == (300, 500) and mask.dtype == bool
        assert not mask[outside].any()
    # A second view of the same image is a second encode; going back to the first is not.
    seg.segment(image, "img", PixelBox(0, 0, 500, 300), Prompt(box=(10, 10, 50, 50)))
    seg.segment(image, "img", region, Prompt(box=(150, 80, 300, 200)))
    assert seg.encoder_calls == 2


def test_sam2_is_deterministic_and_prompt_dependent(tiny_sam2_dir) -> None:
    seg = build_segmenter("sam2", model=tiny_sam2_dir)
    image, _ = _disk_scene()
    region = _whole(image)
    a = seg.segment(image, "img", region, Prompt(box=(110, 60, 230, 180)))
    b = seg.segment(image, "img", region, Prompt(box=(110, 60, 230, 180)))
    c = seg.segment(image, "img", region, Prompt(points=((20, 20),), point_labels=(1,)))
    assert np.array_equal(a, b)
    # Random weights give noise masks, but different prompts must reach the decoder as different input.
    assert not np.array_equal(a, c)


def test_sam2_missing_checkpoint_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(SegmenterError, match="cannot load the SAM2 checkpoint"):
        build_segmenter("sam2", model=str(tmp_path))


# --- Meta's sam2 package: an optional extra, absent here -------------------------------------------


def test_sam2_official_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail as if the package were absent, installed or not.
    monkeypatch.setitem(__import__("sys").modules, "sam2", None)
    with pytest.raises(SegmenterError, match=r"needs Meta's sam2 package.*pip install --no-deps"):
        build_segmenter("sam2-official")


def test_sam2_official_checkpoint_names_map_to_configs() -> None:
    from pathlib import Path

    from segloop.tools.segmenters.sam2_official import config_for_checkpoint

    assert config_for_checkpoint(Path("/w/sam2.1_hiera_base_plus.pt")) == "configs/sam2.1/sam2.1_hiera_b+.yaml"
    assert config_for_checkpoint(Path("sam2_hiera_large.pt")) == "configs/sam2/sam2_hiera_l.yaml"
    with pytest.raises(SegmenterError, match="file name"):
        config_for_checkpoint(Path("model.pt"))


def test_sam2_official_runs_when_installed() -> None:
    pytest.importorskip("sam2", reason="Meta's sam2 package is an optional extra")
    from sam2.build_sam import build_sam2

    from segloop.tools.segmenters.sam2_official import OfficialSam2Segmenter

    # Random weights at 256 px (hiera-tiny's config); the predictor's feature sizes follow the resolution.
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu",
                       hydra_overrides_extra=["++model.image_size=256"])
    seg = OfficialSam2Segmenter(model)
    image, _ = _disk_scene()
    region = PixelBox(20, 20, 300, 220)
    for prompt in (Prompt(box=(110, 60, 230, 180)), Prompt(points=((170, 120),), point_labels=(1,))):
        mask = seg.segment(image, "img", region, prompt)
        assert mask.shape == image.shape[:2] and not mask[:20].any()
    assert seg.encoder_calls == 1


# --- segloop bench tools ----------------------------------------------------------------------------


def test_bench_tools_cli_prints_timings_and_scores_a_manifest(tmp_path, capsys) -> None:
    from segloop.cli import main
    from segloop.tools.images import save_image, save_mask

    image, gt = _disk_scene()
    save_image(image, tmp_path / "img.png")
    save_mask(gt, tmp_path / "m.png")
    ignore = np.zeros_like(gt)
    ignore[:5] = True
    save_mask(ignore, tmp_path / "ignore.png")
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"id": "disk", "image": "img.png", "query": "the red disk", "mask": "m.png", '
                        '"ignore_mask": "ignore.png"}\n')
    assert main(["bench", "tools", "--skip-sam2", "--repeats", "1", "--realdata", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert "overlay + stats" in out and "grabcut 2048x2048 region" in out
    giou = float(next(line for line in out.splitlines() if line.startswith("all")).split()[2])
    assert giou > 0.8


def test_bench_tools_cli_user_errors(tmp_path, capsys) -> None:
    from segloop.cli import main

    assert main(["bench", "tools", "--realdata", str(tmp_path / "none.jsonl")]) == 2
    assert "no such manifest" in capsys.readouterr().err
    assert main(["bench", "tools", "--repeats", "0"]) == 2
