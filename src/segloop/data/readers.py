"""Dataset readers: every benchmark layout becomes a list of ``data.sample.Sample``.

Supported layouts, and the ``--data`` spec that names each (``data.specs.load_samples``):

- the project's manifest, ``PATH/manifest.jsonl``: JSON lines ``{"id", "image", "query", "mask",
  "ignore_mask"?, "kind"?, ...}``; paths relative to the manifest's folder; a mask is a 0/255 PNG path, a
  COCO RLE dict or ``{"polygons": [...]}``, ``null`` for "no such object"; other keys go to ``meta``.
- ReasonSeg (LISA's release), ``reasonseg:DIR`` or ``reasonseg:DIR:all``: ``DIR/*.jpg`` with a same-stem
  ``*.json`` each. One sample per image with the first text (LISA's validation protocol), or with
  ``:all`` one sample per text (for training).
- RefCOCO / RefCOCO+ / RefCOCOg (the ``refer`` layout), ``refcoco:ROOT:DATASET:SPLITBY:SPLIT`` with an
  optional ``:IMAGES`` folder: ``ROOT/DATASET/refs(SPLITBY).p`` and ``ROOT/DATASET/instances.json``, images
  in ``ROOT/images/mscoco/images/train2014``. One sample per referring sentence, as they are scored.
- COD / SOD folders, ``cod:IMAGES:MASKS`` or ``sod:IMAGES:MASKS``: images and ground-truth PNGs matched by
  file stem; the query is "the camouflaged object" / "the salient object".

Every reader fails with ``DatasetError`` naming the file (and line) at fault.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segloop.data.sample import Sample
from segloop.tools.images import ImageError, image_size
from segloop.tools.masks import rle_encode

MANIFEST_KEYS = ("id", "image", "query", "mask", "ignore_mask", "kind")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
COD_QUERY = "the camouflaged object"
SOD_QUERY = "the salient object"


class DatasetError(ValueError):
    """A dataset that cannot be read, with the file (and line) at fault."""


# --- the project's manifest -------------------------------------------------------------------------


def _path(value: str, base: Path) -> Path:
    # normpath folds "lists/../data" so a sample's path reads the same however the manifest reached it.
    return Path(os.path.normpath(value if os.path.isabs(value) else base / value))


def _mask_ref(value: Any, base: Path, where: str, key: str) -> Path | dict | None:
    if value is None:
        return None
    if isinstance(value, str):
        path = _path(value, base)
        if not path.is_file():
            raise DatasetError(f"{where}: {key} file {path} does not exist")
        return path
    if isinstance(value, dict) and ("polygons" in value or ("size" in value and "counts" in value)):
        return value
    raise DatasetError(f"{where}: {key} must be a PNG path, a COCO RLE dict or {{'polygons': ...}}, got {value!r}")


def read_manifest(path: str | Path) -> list[Sample]:
    """The samples of a JSON-lines manifest; paths inside are relative to the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such manifest file")
    base = path.parent
    samples: list[Sample] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise DatasetError(f"{where}: expected a JSON object, got {type(record).__name__}")
            missing = [key for key in ("id", "image", "query") if key not in record]
            if "mask" not in record:
                missing.append("mask")
            if missing:
                raise DatasetError(f"{where}: missing key(s) {', '.join(missing)}")
            sample_id = str(record["id"])
            if sample_id in seen:
                raise DatasetError(f"{where}: duplicate id {sample_id!r}")
            seen.add(sample_id)
            if not isinstance(record["image"], str) or not isinstance(record["query"], str):
                raise DatasetError(f"{where}: 'image' and 'query' must be strings")
            image = _path(record["image"], base)
            if not image.is_file():
                raise DatasetError(f"{where}: image file {image} does not exist")
            samples.append(
                Sample(
                    id=sample_id,
                    image=image,
                    query=record["query"],
                    mask=_mask_ref(record["mask"], base, where, "mask"),
                    ignore_mask=_mask_ref(record.get("ignore_mask"), base, where, "ignore_mask"),
                    kind=str(record.get("kind") or "unknown"),
                    meta={k: v for k, v in record.items() if k not in MANIFEST_KEYS},
                )
            )
    return samples


def _relative(path: Path, base: Path) -> str:
    # Relative even across folders ("../images/x.png") so a manifest can sit beside or above its data.
    return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()


def write_manifest(samples: Iterable[Sample], path: str | Path) -> Path:
    """Write samples as a manifest whose paths are relative to its folder; ``meta`` keys become top-level
    keys again, so ``read_manifest(write_manifest(s, p)) == s``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent
    lines = []
    for sample in samples:
        if sample.image is None:
            raise DatasetError(f"sample {sample.id!r} is a synthetic scene, not a file; write it with segloop synth")
        clash = sorted(set(sample.meta) & set(MANIFEST_KEYS))
        if clash:
            raise DatasetError(f"sample {sample.id!r}: meta key(s) {clash} clash with manifest keys")
        record: dict[str, Any] = {"id": sample.id, "image": _relative(sample.image, base), "query": sample.query}
        for key, ref in (("mask", sample.mask), ("ignore_mask", sample.ignore_mask)):
            if isinstance(ref, Path):
                record[key] = _relative(ref, base)
            elif ref is not None or key == "mask":
                record[key] = ref
        record["kind"] = sample.kind
        record.update(sample.meta)
        lines.append(json.dumps(record, ensure_ascii=False))
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --- ReasonSeg ---------------------------------------------------------------------------------------


def reasonseg_masks(annotation: dict, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Target and ignore masks from a ReasonSeg annotation, rasterised as LISA's evaluation does:
    "flag" shapes are dropped, polygons are filled largest first so a smaller one painted later wins,
    labels containing "ignore" become the ignore region."""
    shapes = [s for s in annotation["shapes"] if s["label"].lower() != "flag"]
    polygons = [np.array([s["points"]], dtype=np.int32) for s in shapes]
    areas = []
    for polygon in polygons:
        tmp = np.zeros((height, width), dtype=np.uint8)
        cv2.polylines(tmp, polygon, True, 1, 1)
        cv2.fillPoly(tmp, polygon, 1)
        areas.append(int(tmp.sum()))
    label = np.zeros((height, width), dtype=np.uint8)
    for index in np.argsort(areas, kind="stable")[::-1]:
        value = 255 if "ignore" in shapes[index]["label"].lower() else 1
        cv2.polylines(label, polygons[index], True, value, 1)
        cv2.fillPoly(label, polygons[index], value)
    return label == 1, label == 255


def read_reasonseg(folder: str | Path, all_texts: bool = False) -> list[Sample]:
    """ReasonSeg samples from LISA's layout: ``*.jpg`` + same-stem ``*.json`` (``text``, ``is_sentence``,
    labelme ``shapes``). One sample per image with its first text, or one per text with ``all_texts``.
    Masks are stored as RLE (decoded at the image's size), kind ``reason_sentence`` / ``reason_phrase``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such ReasonSeg folder")
    images = sorted(folder.glob("*.jpg"))
    if not images:
        raise DatasetError(f"{folder}: no *.jpg images")
    samples: list[Sample] = []
    for image in images:
        json_path = image.with_suffix(".json")
        if not json_path.is_file():
            raise DatasetError(f"{image}: no annotation {json_path.name} beside it")
        try:
            width, height = image_size(image)
        except ImageError as exc:
            raise DatasetError(str(exc)) from exc
        try:
            annotation = json.loads(json_path.read_text(encoding="utf-8"))
            texts = annotation["text"]
            texts = [texts] if isinstance(texts, str) else list(texts)
            is_sentence = bool(annotation["is_sentence"])
            target, ignore = reasonseg_masks(annotation, height, width)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, cv2.error) as exc:
            if isinstance(exc, DatasetError):
                raise
            raise DatasetError(f"{json_path}: not a ReasonSeg annotation ({type(exc).__name__}: {exc})") from exc
        if not texts:
            raise DatasetError(f"{json_path}: 'text' is empty")
        mask = rle_encode(target)
        ignore_ref = rle_encode(ignore) if ignore.any() else None
        chosen = texts if all_texts else texts[:1]
        for index, text in enumerate(chosen):
            samples.append(
                Sample(
                    id=f"{image.stem}_{index}" if all_texts else image.stem,
                    image=image,
                    query=str(text),
                    mask=mask,
                    ignore_mask=ignore_ref,
                    kind="reason_sentence" if is_sentence else "reason_phrase",
                    meta={"text_index": index},
                )
            )
    return samples


# --- RefCOCO / RefCOCO+ / RefCOCOg -------------------------------------------------------------------


class _PlainUnpickler(pickle.Unpickler):
    """refs(*).p holds only lists, dicts, strings and numbers: refuse anything that would import code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refuses to load {module}.{name}: a refs file holds only plain data")


def _load_refs(path: Path) -> list[dict]:
    try:
        with path.open("rb") as handle:
            # The released refs files are Python 2 pickles; latin1 maps their byte strings to str.
            refs = _PlainUnpickler(handle, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DatasetError(f"{path}: not a refer refs pickle ({exc})") from exc
    if not isinstance(refs, list):
        raise DatasetError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    return refs


def read_refcoco(root: str | Path, dataset: str = "refcoco", split_by: str = "unc", split: str = "val",
                 images: str | Path | None = None) -> list[Sample]:
    """One sample per referring sentence of ``split`` in ``ROOT/DATASET/refs(SPLITBY).p``, its mask from
    the referred annotation's segmentation (polygons or RLE) in ``ROOT/DATASET/instances.json``."""
    root = Path(root)
    refs_path = root / dataset / f"refs({split_by}).p"
    instances_path = root / dataset / "instances.json"
    image_dir = Path(images) if images is not None else root / "images" / "mscoco" / "images" / "train2014"
    for needed in (refs_path, instances_path):
        if not needed.is_file():
            raise DatasetError(f"{needed}: no such file")
    if not image_dir.is_dir():
        raise DatasetError(f"{image_dir}: no such image folder")
    refs = _load_refs(refs_path)
    try:
        instances = json.loads(instances_path.read_text(encoding="utf-8"))
        image_info = {img["id"]: img for img in instances["images"]}
        annotations = {ann["id"]: ann for ann in instances["annotations"]}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatasetError(f"{instances_path}: not a COCO instances file ({type(exc).__name__}: {exc})") from exc
    samples: list[Sample] = []
    for ref in refs:
        try:
            if ref["split"] != split:
                continue
            ann = annotations[ref["ann_id"]]
            info = image_info[ref["image_id"]]
            segmentation = ann["segmentation"]
            height, width = int(info["height"]), int(info["width"])
            if isinstance(segmentation, list):
                mask: dict = {"polygons": segmentation}
            else:
                mask = {"size": [height, width], "counts": segmentation["counts"]}
            for sentence in ref["sentences"]:
                samples.append(
                    Sample(
                        id=f"{dataset}_{split_by}_{split}_{ref['ref_id']}_{sentence['sent_id']}",
                        image=image_dir / info["file_name"],
                        query=sentence["sent"],
                        mask=mask,
                        kind=dataset,
                        meta={"ref_id": ref["ref_id"], "ann_id": ref["ann_id"], "image_id": ref["image_id"],
                              "sent_id": sentence["sent_id"], "category_id": ref.get("category_id")},
                    )
                )
        except (KeyError, TypeError) as exc:
            raise DatasetError(f"{refs_path}: ref {ref.get('ref_id', '?') if isinstance(ref, dict) else ref!r} "
                               f"is inconsistent with {instances_path.name} ({type(exc).__name__}: {exc})") from exc
    if not samples:
        raise DatasetError(f"{refs_path}: no refs in split {split!r}")
    return samples


# --- COD / SOD ---------------------------------------------------------------------------------------


def read_mask_folder(images: str | Path, masks: str | Path, query: str, kind: str) -> list[Sample]:
    """Images and ground-truth PNGs matched by file stem; every image needs its mask."""
    images, masks = Path(images), Path(masks)
    for folder in (images, masks):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no such folder")
    mask_by_stem = {p.stem: p for p in sorted(masks.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    image_paths = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not image_paths:
        raise DatasetError(f"{images}: no images")
    missing = [p.name for p in image_paths if p.stem not in mask_by_stem]
    if missing:
        raise DatasetError(f"{masks}: no mask for {len(missing)} image(s), e.g. {', '.join(missing[:3])}")
    return [Sample(id=p.stem, image=p, query=query, mask=mask_by_stem[p.stem], kind=kind) for p in image_paths]
