"""The synthetic world: grammar semantics, determinism, truthful unique queries, size classes."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from segloop.cli import main as cli_main
from segloop.data.readers import read_manifest
from segloop.data.synth import (
    ATTRIBUTES,
    COLOURS,
    STRIPE_SHADE,
    VOCABULARY,
    NounPhrase,
    Query,
    SceneObject,
    SynthError,
    generate_scene,
    parse_query,
    refers_to,
    resolve,
    scene_seed,
)
from segloop.tools.masks import box_of


def _obj(shape: str, colour: str, cx: float, cy: float, size: str = "medium", fill: str = "solid",
         diameter: float = 40.0) -> SceneObject:
    return SceneObject(shape=shape, colour=colour, fill=fill, size=size, cx=cx, cy=cy, diameter=diameter,
                       angle=0.0, area=diameter**2)


# --- the grammar ------------------------------------------------------------------------------------


def test_parse_round_trip_and_errors() -> None:
    for text in ("the red circle", "the only striped triangle", "the largest blue square",
                 "the small green star left of the red circle", "the topmost object",
                 "the medium yellow hollow hexagon below the purple diamond", "the orange object above the star"):
        assert parse_query(text).text() == text
    query = parse_query("the small green star left of the red circle")
    assert query == Query(NounPhrase(size="small", colour="green", shape="star"), relation="left of",
                          anchor=NounPhrase(colour="red", shape="circle"))
    for bad in ("red circle", "the circle red", "the red", "the big circle", "the red circle near the star", ""):
        with pytest.raises(SynthError):
            parse_query(bad)


def test_resolve_semantics_on_a_hand_built_scene() -> None:
    objects = [
        _obj("circle", "red", 100, 100),                                  # 0
        _obj("circle", "red", 300, 110, size="large", diameter=90),       # 1
        _obj("star", "green", 40, 105, size="small", diameter=12),        # 2: left of 0
        _obj("star", "green", 400, 100, size="small", diameter=12),       # 3: right of 0 and of 1
        _obj("square", "blue", 100, 300, fill="striped"),                 # 4: below 0
        _obj("square", "blue", 120, 330, fill="hollow"),                  # 5
        _obj("hexagon", "orange", 700, 300),                              # 6: far right of 4
    ]

    def ids(text: str) -> list[int]:
        return resolve(parse_query(text), objects)

    assert ids("the red circle") == [0, 1]
    assert ids("the large red circle") == [1]
    assert ids("the striped object") == [4]
    assert ids("the only hollow square") == [5]
    assert ids("the largest circle") == [1]           # 8100 vs 1600: beyond the 1.5x margin
    assert ids("the smallest star") == [2, 3]         # equal areas: no clear winner
    assert ids("the leftmost star") == [2]
    assert ids("the topmost blue square") == [4, 5]   # 30 px apart, less than the margin (a diameter, 40)
    assert ids("the topmost square") == [4, 5] and ids("the topmost object") == [0, 1, 2, 3]
    assert refers_to(parse_query("the star left of the medium red circle"), objects) == 2
    assert ids("the star right of the medium red circle") == [3]
    # Right of the striped square: 1 at distance 276 and 3 at 361 are within 1.5x of the nearest;
    # 6, straight right but 600 away, is not.
    assert ids("the object right of the striped object") == [1, 3]
    assert ids("the hexagon right of the striped object") == [6]
    assert ids("the object above the striped object") == [0, 1, 2]  # 3 is outside the cone
    # "the red circle" matches two anchors: the query does not single anything out.
    assert refers_to(parse_query("the star left of the red circle"), objects) is None
    assert refers_to(parse_query("the purple circle"), objects) is None and ids("the purple circle") == []


# --- scenes -----------------------------------------------------------------------------------------


def _objects(meta: dict) -> list[SceneObject]:
    return [SceneObject(**o) for o in meta["objects"]]


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_queries_are_true_unique_and_masks_have_the_target_colour(difficulty: str) -> None:
    kinds: Counter[str] = Counter()
    for index in range(12):
        image, mask, query, meta = generate_scene(scene_seed(3, index), size=384, difficulty=difficulty,
                                                  no_target_rate=0.15)
        objects = _objects(meta)
        parsed = parse_query(query)
        assert parsed.text() == query and set(query.split()) <= set(VOCABULARY)
        kinds[meta["kind"]] += 1
        if meta["kind"] == "no_target":
            assert mask is None and resolve(parsed, objects) == [] and meta["size_class"] == "none"
            continue
        assert refers_to(parsed, objects) == 0
        target = objects[0]
        assert {k: getattr(target, k) for k in ATTRIBUTES} == meta["target"]
        if meta["kind"] in ("attribute", "unique"):
            # Counted directly from the scene description, not through resolve().
            named = {k: v for k, v in zip(ATTRIBUTES, parsed.np, strict=True) if v is not None}
            assert sum(all(getattr(o, k) == v for k, v in named.items()) for o in objects) == 1
        assert mask.dtype == bool and mask.shape == image.shape[:2] and mask.any()
        assert box_of(mask) == tuple(meta["box"])
        colour = np.array(COLOURS[target.colour], dtype=np.uint8)
        allowed = [colour, (colour * STRIPE_SHADE).astype(np.uint8)] if target.fill == "striped" else [colour]
        pixels = image[mask]
        assert np.all(np.any([np.all(pixels == c, axis=1) for c in allowed], axis=0))
        if target.fill == "striped":
            assert all(np.any(np.all(pixels == c, axis=1)) for c in allowed)
        x1, y1, x2, y2 = meta["box"]
        assert x1 - 3 <= target.cx <= x2 + 3 and y1 - 3 <= target.cy <= y2 + 3
    assert len(kinds) >= 3, kinds


def test_same_seed_same_scene_and_seeds_differ() -> None:
    a = generate_scene(11, size=256)
    b = generate_scene(11, size=256)
    c = generate_scene(12, size=256)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) and a.query == b.query
    assert a.meta == b.meta
    assert not np.array_equal(a.image, c.image)


def test_size_classes_at_high_resolution() -> None:
    classes = Counter(generate_scene(scene_seed(5, i), size=1536, difficulty="medium").meta["size_class"]
                      for i in range(24))
    small = classes["XXS"] + classes["XS"] + classes["S"]
    assert classes["XXS"] >= 4, classes
    assert small >= 0.6 * 24, classes


def test_bad_arguments() -> None:
    with pytest.raises(SynthError, match="unknown difficulty"):
        generate_scene(0, difficulty="brutal")
    with pytest.raises(SynthError, match="too small"):
        generate_scene(0, size=64)
    with pytest.raises(SynthError, match="no-target rate"):
        generate_scene(0, no_target_rate=1.5)


# --- segloop synth ----------------------------------------------------------------------------------


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_is_deterministic_and_writes_a_readable_manifest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["synth", "--n", "6", "--seed", "4", "--size", "256", "--no-target-rate", "0.3", "--quiet"]
    assert cli_main([*args, "--out", str(tmp_path / "a")]) == 0
    assert cli_main([*args, "--out", str(tmp_path / "b")]) == 0
    assert cli_main([*args[:4], "5", *args[5:], "--out", str(tmp_path / "c")]) == 0
    first, second, other = (_hashes(tmp_path / x) for x in "abc")
    assert first == second and len(first) >= 7
    assert first["manifest.jsonl"] != other["manifest.jsonl"]
    assert first["images/synth_4_00000.png"] != other["images/synth_5_00000.png"]

    samples = read_manifest(tmp_path / "a" / "manifest.jsonl")
    assert len(samples) == 6
    no_target = [s for s in samples if s.kind == "no_target"]
    assert no_target, [s.kind for s in samples]
    for sample in samples:
        image = sample.load().image
        assert image.shape == (256, 256, 3)
        mask = sample.load_truth()[0]
        assert mask.any() == (sample.kind != "no_target")
        assert sample.meta["scene_seed"] == scene_seed(4, int(sample.id.rsplit("_", 1)[1]))
        assert "objects" not in sample.meta and sample.meta["size_class"]
    assert all(s.mask is None for s in no_target)
    assert not (tmp_path / "a" / "masks" / f"{no_target[0].id}.png").exists()

    assert cli_main(["synth", "--out", str(tmp_path / "d"), "--n", "0"]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err


def test_segloop_synth_defaults_to_the_world_the_bundled_agent_was_trained_on(capsys: pytest.CaptureFixture) -> None:
    """Item 10: `segloop synth` with no world flags writes the world of scripts/train_default_agent.sh."""
    script = (Path(__file__).resolve().parents[1] / "scripts" / "train_default_agent.sh").read_text()
    world = re.search(r'^WORLD="(\w+):(\d+)"$', script, re.MULTILINE)
    rate = re.search(r'--data "synth:\$\{WORLD\}:1:\d+:([\d.]+)"', script)
    assert world and rate
    with pytest.raises(SystemExit):
        cli_main(["synth", "--help"])
    text = " ".join(capsys.readouterr().out.split("\noptions:\n", 1)[1].split())
    assert f"--size SIZE image side in pixels (default: {world.group(2)})" in text
    assert f"(default: {world.group(1)})" in text.split("--difficulty", 1)[1].split("--no-target-rate")[0]
    assert f"(default: {rate.group(1)})" in text.split("--no-target-rate", 1)[1]
