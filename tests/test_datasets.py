"""Dataset readers: fixtures in each real layout, decoded masks checked pixel by pixel."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segloop.data.readers import (
    COD_QUERY,
    DatasetError,
    read_manifest,
    read_reasonseg,
    read_refcoco,
    write_manifest,
)
from segloop.data.sample import Sample
from segloop.data.specs import load_samples
from segloop.tools.images import save_mask
from segloop.tools.masks import rle_encode

REALDATA = Path("/work/shared/realdata/manifest.jsonl")


def _image(path: Path, width: int, height: int, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path, format=fmt)
    return path


# --- manifest ---------------------------------------------------------------------------------------


def _manifest(tmp_path: Path, lines: list) -> Path:
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_manifest_reads_png_rle_polygon_and_none_masks(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "a.png", 6, 4)
    gt = np.zeros((4, 6), bool)
    gt[1:3, 2:5] = True
    save_mask(gt, tmp_path / "gt" / "a.png")
    ignore = np.zeros((4, 6), bool)
    ignore[0, 0] = True
    lines = [
        {"id": "png", "image": "img/a.png", "query": "q", "mask": "gt/a.png", "kind": "k", "extra": 3},
        {"id": "rle", "image": "img/a.png", "query": "q", "mask": rle_encode(gt), "ignore_mask": rle_encode(ignore)},
        {"id": "poly", "image": "img/a.png", "query": "q", "mask": {"polygons": [[2, 1, 5, 1, 5, 3, 2, 3]]}},
        {"id": "none", "image": "img/a.png", "query": "nothing", "mask": None, "kind": "no_target"},
    ]
    samples = read_manifest(_manifest(tmp_path, lines))
    by_id = {s.id: s for s in samples}
    assert by_id["png"].kind == "k" and by_id["png"].meta == {"extra": 3}
    assert by_id["rle"].kind == "unknown"
    for sample_id in ("png", "rle", "poly"):
        np.testing.assert_array_equal(by_id[sample_id].load_truth()[0], gt)
    np.testing.assert_array_equal(by_id["rle"].load_truth()[1], ignore)
    assert by_id["png"].load_truth()[1] is None
    assert not by_id["none"].load_truth()[0].any()
    assert by_id["png"].load().image.shape == (4, 6, 3)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({"id": "x", "image": "a.png", "mask": None}, r"missing key\(s\) query"),
        ({"id": "x", "image": "a.png", "query": "q"}, r"missing key\(s\) mask"),
        ({"id": "x", "image": "nope.png", "query": "q", "mask": None}, "image file"),
        ({"id": "x", "image": "a.png", "query": "q", "mask": "nope.png"}, "mask file"),
        ({"id": "x", "image": "a.png", "query": "q", "mask": {"foo": 1}}, "must be a PNG path"),
    ],
)
def test_manifest_errors_name_file_and_line(tmp_path: Path, line: object, message: str) -> None:
    _image(tmp_path / "a.png", 4, 4)
    good = {"id": "ok", "image": "a.png", "query": "q", "mask": None}
    path = _manifest(tmp_path, [good, "", line])
    with pytest.raises(DatasetError, match=message) as info:
        read_manifest(path)
    assert f"{path}:3" in str(info.value)


def test_manifest_duplicate_id_and_missing_file(tmp_path: Path) -> None:
    _image(tmp_path / "a.png", 4, 4)
    line = {"id": "x", "image": "a.png", "query": "q", "mask": None}
    with pytest.raises(DatasetError, match=r"manifest.jsonl:2: duplicate id"):
        read_manifest(_manifest(tmp_path, [line, line]))
    with pytest.raises(DatasetError, match="no such manifest"):
        read_manifest(tmp_path / "absent.jsonl")


def test_write_manifest_round_trip_with_relative_paths(tmp_path: Path) -> None:
    image = _image(tmp_path / "data" / "img" / "a.png", 5, 5)
    mask = save_mask(np.eye(5, dtype=bool), tmp_path / "data" / "gt" / "a.png")
    samples = [
        Sample(id="a", image=image, query="the diagonal", mask=mask, kind="k", meta={"n": 1, "tags": ["x"]}),
        Sample(id="b", image=image, query="nothing", mask=None, ignore_mask=rle_encode(np.eye(5, dtype=bool))),
    ]
    out = write_manifest(samples, tmp_path / "lists" / "m.jsonl")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0]["image"] == "../data/img/a.png" and records[0]["mask"] == "../data/gt/a.png"
    assert records[0]["n"] == 1 and records[1]["mask"] is None
    again = read_manifest(out)
    assert [s.model_dump() for s in again] == [s.model_dump() for s in samples]
    with pytest.raises(DatasetError, match="clash"):
        write_manifest([Sample(id="c", image=image, query="q", meta={"kind": "x"})], tmp_path / "bad.jsonl")


@pytest.mark.skipif(not REALDATA.is_file(), reason="real development data not on this machine")
def test_real_manifest_loads() -> None:
    samples = load_samples(REALDATA)
    assert len(samples) == 17
    with_ignore = 0
    for sample in samples:
        image = sample.load().image
        assert image.dtype == np.uint8 and image.shape[2] == 3
        assert (image.shape[1], image.shape[0]) == (sample.meta["width"], sample.meta["height"])
        mask = sample.load_truth()[0]
        assert mask.shape == image.shape[:2]
        assert abs(mask.mean() - sample.meta["mask_area_frac"]) < 1e-4
        ignore = sample.load_truth()[1]
        if ignore is not None:
            with_ignore += 1
            assert ignore.shape == mask.shape and ignore.any()
    assert with_ignore == 5


# --- ReasonSeg ---------------------------------------------------------------------------------------


def _reasonseg(folder: Path, stem: str, texts: list[str], is_sentence: bool, shapes: list[dict]) -> None:
    _image(folder / f"{stem}.jpg", 20, 16, fmt="JPEG")
    (folder / f"{stem}.json").write_text(json.dumps({"text": texts, "is_sentence": is_sentence, "shapes": shapes}))


def _shape(label: str, points: list[list[float]]) -> dict:
    return {"label": label, "labelme_version": "5.1.1", "points": points, "group_id": None,
            "shape_type": "polygon", "flags": {}}


def test_reasonseg_masks_ignore_and_texts(tmp_path: Path) -> None:
    _reasonseg(tmp_path, "img1", ["What keeps the food cold?", "the fridge"], True, [
        _shape("target", [[2, 2], [12, 2], [12, 10], [2, 10]]),
        _shape("ignore", [[4, 4], [6, 4], [6, 6], [4, 6]]),  # smaller, painted after the target: wins
        _shape("flag", [[15, 0], [19, 0], [19, 5], [15, 5]]),  # deprecated: dropped
    ])
    _reasonseg(tmp_path, "img2", ["the cup"], False, [_shape("target", [[0, 0], [3, 0], [3, 3], [0, 3]])])
    samples = read_reasonseg(tmp_path)
    assert [(s.id, s.query, s.kind) for s in samples] == [
        ("img1", "What keeps the food cold?", "reason_sentence"), ("img2", "the cup", "reason_phrase")]
    expected_ignore = np.zeros((16, 20), bool)
    expected_ignore[4:7, 4:7] = True
    expected = np.zeros((16, 20), bool)
    expected[2:11, 2:13] = True
    expected &= ~expected_ignore
    np.testing.assert_array_equal(samples[0].load_truth()[0], expected)
    np.testing.assert_array_equal(samples[0].load_truth()[1], expected_ignore)
    assert samples[1].load_truth()[1] is None
    assert samples[1].load_truth()[0].sum() == 16

    every = load_samples(f"reasonseg:{tmp_path}:all")
    assert [s.id for s in every] == ["img1_0", "img1_1", "img2_0"]
    assert every[1].query == "the fridge"


def test_reasonseg_errors(tmp_path: Path) -> None:
    _image(tmp_path / "lonely.jpg", 4, 4, fmt="JPEG")
    with pytest.raises(DatasetError, match=r"lonely\.jpg: no annotation lonely\.json"):
        read_reasonseg(tmp_path)
    (tmp_path / "lonely.json").write_text(json.dumps({"text": ["x"]}))
    with pytest.raises(DatasetError, match=r"lonely\.json: not a ReasonSeg annotation"):
        read_reasonseg(tmp_path)
    with pytest.raises(DatasetError, match="expected reasonseg:DIR"):
        load_samples(f"reasonseg:{tmp_path}:some")


# --- RefCOCO -----------------------------------------------------------------------------------------


def _refcoco(root: Path) -> None:
    """refer's layout: refs(unc).p (a Python-2-era pickle of plain dicts) and COCO instances.json."""
    images = root / "images" / "mscoco" / "images" / "train2014"
    _image(images / "COCO_train2014_000000000001.jpg", 12, 10, fmt="JPEG")
    _image(images / "COCO_train2014_000000000002.jpg", 5, 4, fmt="JPEG")
    instances = {
        "info": {}, "licenses": [],
        "images": [
            {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 10, "width": 12},
            {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": 4, "width": 5},
        ],
        "annotations": [
            {"id": 101, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 24.0, "bbox": [2, 3, 6, 4],
             "segmentation": [[2, 3, 8, 3, 8, 7, 2, 7]]},
            {"id": 102, "image_id": 2, "category_id": 3, "iscrowd": 1, "area": 3.0, "bbox": [1, 1, 1, 3],
             "segmentation": {"size": [4, 5], "counts": [5, 3, 12]}},
        ],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 3, "name": "car", "supercategory": "vehicle"}],
    }
    refs = [
        {"sent_ids": [0, 1], "file_name": "COCO_train2014_000000000001_101.jpg", "ann_id": 101, "ref_id": 0,
         "image_id": 1, "split": "val", "category_id": 1,
         "sentences": [{"tokens": ["man", "left"], "raw": "Man left", "sent_id": 0, "sent": "man left"},
                       {"tokens": ["person"], "raw": "person", "sent_id": 1, "sent": "person"}]},
        {"sent_ids": [2], "file_name": "COCO_train2014_000000000002_102.jpg", "ann_id": 102, "ref_id": 1,
         "image_id": 2, "split": "testA", "category_id": 3,
         "sentences": [{"tokens": ["cars"], "raw": "cars", "sent_id": 2, "sent": "cars"}]},
    ]
    (root / "refcoco").mkdir(parents=True)
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))


def test_refcoco_sentences_polygon_and_rle(tmp_path: Path) -> None:
    _refcoco(tmp_path)
    val = read_refcoco(tmp_path, "refcoco", "unc", "val")
    assert [(s.query, s.meta["sent_id"], s.kind) for s in val] == [("man left", 0, "refcoco"), ("person", 1, "refcoco")]
    assert val[0].image.name == "COCO_train2014_000000000001.jpg"
    expected = np.zeros((10, 12), bool)
    expected[3:7, 2:8] = True
    assert val[0].load().image.shape == (10, 12, 3)
    np.testing.assert_array_equal(val[0].load_truth()[0], expected)
    (crowd,) = load_samples(f"refcoco:{tmp_path}:refcoco:unc:testA")
    expected = np.zeros((4, 5), bool)
    expected[1:4, 1] = True
    np.testing.assert_array_equal(crowd.load_truth()[0], expected)


def test_refcoco_errors(tmp_path: Path) -> None:
    _refcoco(tmp_path)
    with pytest.raises(DatasetError, match="no refs in split 'train'"):
        read_refcoco(tmp_path, split="train")
    with pytest.raises(DatasetError, match=r"refs\(umd\)\.p: no such file"):
        read_refcoco(tmp_path, split_by="umd")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(DatasetError, match=r"refuses to load builtins\.print"):
        read_refcoco(tmp_path)


# --- COD / SOD ---------------------------------------------------------------------------------------


def test_cod_folder_matched_by_stem(tmp_path: Path) -> None:
    for stem in ("b", "a"):
        _image(tmp_path / "Imgs" / f"{stem}.jpg", 6, 4, fmt="JPEG")
    gt = np.zeros((4, 6), bool)
    gt[0, :3] = True
    save_mask(gt, tmp_path / "GT" / "a.png")
    save_mask(~gt, tmp_path / "GT" / "b.png")
    samples = load_samples(f"cod:{tmp_path / 'Imgs'}:{tmp_path / 'GT'}")
    assert [(s.id, s.query, s.kind) for s in samples] == [("a", COD_QUERY, "cod"), ("b", COD_QUERY, "cod")]
    np.testing.assert_array_equal(samples[0].load_truth()[0], gt)
    np.testing.assert_array_equal(samples[1].load_truth()[0], ~gt)
    assert load_samples(f"sod:{tmp_path / 'Imgs'}:{tmp_path / 'GT'}")[0].query == "the salient object"
    (tmp_path / "GT" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"no mask for 1 image\(s\), e\.g\. b\.jpg"):
        load_samples(f"cod:{tmp_path / 'Imgs'}:{tmp_path / 'GT'}")
