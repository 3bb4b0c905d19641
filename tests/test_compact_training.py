"""The compact policy's perception cache and dense pre-training, and the decision probes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segloop.data.synth import COLOURS, generate_scene, scene_seed
from segloop.policies.compact import CompactPolicy
from segloop.rl.compact.cache import LABEL_COLUMNS, CacheConfig, PerceptionCache, build
from segloop.rl.compact.pretrain import perception_loss, symmetric

SMALL = {"max_side": 112, "root_input": 64, "zoom_input": 64, "grid": 16, "channels": 16, "dilations": [1, 2]}
COLUMN = {name: i for i, name in enumerate(LABEL_COLUMNS)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> PerceptionCache:
    out = tmp_path_factory.mktemp("cache") / "c"
    build(CacheConfig(data="synth:easy:384:5:12:0.2", out=out, compact_options=SMALL, seed=3))
    return PerceptionCache(out)


def _colour_at(image: np.ndarray, row: np.ndarray) -> np.ndarray:
    """The pixel at a label's centre in a (3, S, S) view."""
    size = image.shape[-1]
    x = min(int(row[COLUMN["cx"]] * size), size - 1)
    y = min(int(row[COLUMN["cy"]] * size), size - 1)
    return image[:, y, x].astype(int)


def test_every_view_labels_the_objects_whose_centre_it_holds_where_they_are(cache: PerceptionCache) -> None:
    scene = cache.scenes[0]
    made = generate_scene(scene_seed(5, scene["scene"]), 384, "easy", 0.2)
    root_labels = cache.labels["root"][scene["root_row"]]
    assert len(root_labels) == len(made.meta["objects"])  # the full view holds every object
    for row in root_labels:
        obj = made.meta["objects"][int(row[COLUMN["object"]])]
        assert list(COLOURS)[int(row[COLUMN["colour"]])] == obj["colour"]
        if obj["fill"] == "solid" and obj["size"] == "large":
            # The view's pixel at a large solid object's centre has the object's colour.
            pixel = _colour_at(cache.images["root"][scene["root_row"]], row)
            assert np.abs(pixel - np.array(COLOURS[obj["colour"]])).sum() < 60
    assert cache.magnification["root"][scene["root_row"]] == 0.0
    for zoom in scene["zooms"]:
        rows = cache.labels["zoom"][zoom["row"]]
        x1, y1, x2, y2 = zoom["box"]
        inside = [k for k, o in enumerate(made.meta["objects"]) if x1 <= o["cx"] < x2 and y1 <= o["cy"] < y2]
        assert sorted(int(r[COLUMN["object"]]) for r in rows) == inside
        assert zoom["object"] in inside
        assert cache.magnification["zoom"][zoom["row"]] > 0


def test_a_symmetry_keeps_every_label_on_its_object(cache: PerceptionCache) -> None:
    row = cache.scenes[1]["root_row"]
    image = torch.from_numpy(np.array(cache.images["root"][row]))[None]
    labels = [cache.labels["root"][row]]
    for k in range(8):
        moved, moved_labels = symmetric(image, labels, k)
        for before, after in zip(labels[0], moved_labels[0], strict=True):
            assert np.array_equal(_colour_at(image[0].numpy(), before), _colour_at(moved[0].numpy(), after))
            if k & 4:
                assert (after[COLUMN["width"]], after[COLUMN["height"]]) == (before[COLUMN["height"]],
                                                                             before[COLUMN["width"]])


def test_dense_pretraining_fits_a_fixed_batch(cache: PerceptionCache) -> None:
    torch.manual_seed(0)
    policy = CompactPolicy.create(seed=0, **SMALL)
    net = policy.perception(0)
    rows = list(range(8))
    images = torch.from_numpy(np.stack([cache.images["root"][r] for r in rows]))
    scale = torch.from_numpy(cache.magnification["root"][rows])
    labels = [cache.labels["root"][r] for r in rows]
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = perception_loss(net(images, scale), labels, 16, policy.shares, 4.0).item()
    for _ in range(40):
        loss = perception_loss(net(images, scale), labels, 16, policy.shares, 4.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.6 * first


@pytest.mark.slow
def test_cache_pretrain_and_probe_through_the_cli(tmp_path: Path, cache: PerceptionCache) -> None:
    import json

    from segloop.cli import main as cli
    from segloop.rl.compact.probe import probe

    out = tmp_path / "pretrain"
    assert cli(["train", "pretrain", "--cache", str(cache.directory), "--eval-cache", str(cache.directory),
                "--out", str(out), "--steps", "4", "--batch", "4", "--eval-every", "2", "--eval-n", "6",
                "--compact-options", json.dumps(SMALL)]) == 0
    policy = CompactPolicy.from_pretrained(out / "final")
    figures = probe(policy, cache, 6)
    assert {"first_view_hit", "first_view_top3", "judge_target", "judge_lookalike"} <= set(figures)
    assert all(0 <= v <= 1 for k, v in figures.items() if not k.endswith("_n"))
    assert figures.get("first_view_hit_n", 0) + figures.get("no_target_n", 0) == 6  # one first view per scene
