"""segloop eval-masks on fixtures whose IoUs are computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segloop.cli import main as cli_main
from segloop.data.specs import load_samples
from segloop.evaluation.predictions import EvaluationError, evaluate_predictions
from segloop.tools.images import save_mask
from segloop.tools.masks import rle_encode


def _mask(rows: slice = slice(0, 0), cols: slice = slice(0, 0)) -> np.ndarray:
    mask = np.zeros((10, 10), bool)
    mask[rows, cols] = True
    return mask


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path]:
    """Five 10x10 samples; the comments give each one's intersection / union."""
    Image.new("RGB", (10, 10)).save(tmp_path / "img.png")
    gts = {
        "half": _mask(slice(0, 5), slice(None)),         # pred: left half -> 25 / 75
        "same": _mask(slice(2, 6), slice(2, 6)),          # pred: identical -> 16 / 16
        "none": None,                                     # no prediction, no target -> 0 / 0, IoU 1
        "lost": _mask(slice(0, 1), slice(None)),          # no prediction -> 0 / 10
        "ignored": _mask(slice(None), slice(0, 5)),       # pred: everything, right half ignored -> 50 / 50
    }
    preds = {"half": _mask(slice(None), slice(0, 5)), "same": gts["same"], "ignored": _mask(slice(None), slice(None))}
    lines = []
    for name, gt in gts.items():
        record = {"id": name, "image": "img.png", "query": name, "kind": "no_target" if gt is None else "thing",
                  "mask": None if gt is None else f"gt/{name}.png"}
        if gt is not None:
            save_mask(gt, tmp_path / "gt" / f"{name}.png")
        if name == "ignored":
            record["ignore_mask"] = rle_encode(_mask(slice(None), slice(5, 10)))
        lines.append(json.dumps(record))
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    for name, pred in preds.items():
        save_mask(pred, tmp_path / "pred" / f"{name}.png")
    return tmp_path / "manifest.jsonl", tmp_path / "pred"


def test_hand_computed_giou_and_ciou(world: tuple[Path, Path]) -> None:
    manifest, pred = world
    result = evaluate_predictions(load_samples(manifest), pred, missing_as_empty=True)
    summary = result.summary
    assert result.missing == ["none", "lost"]
    assert summary["per_sample"] == pytest.approx({"half": 1 / 3, "same": 1.0, "none": 1.0, "lost": 0.0,
                                                   "ignored": 1.0})
    assert summary["n"] == 5
    assert summary["giou"] == pytest.approx((1 / 3 + 1 + 1 + 0 + 1) / 5)
    assert summary["ciou"] == pytest.approx((25 + 16 + 0 + 0 + 50) / (75 + 16 + 0 + 10 + 50))
    assert summary["by_kind"]["no_target"] == {"n": 1, "giou": 1.0, "ciou": 1.0}
    assert summary["by_kind"]["thing"]["giou"] == pytest.approx((1 / 3 + 1 + 0 + 1) / 4)


def test_cli_prints_table_and_writes_json(world: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    manifest, pred = world
    out = tmp_path / "report" / "metrics.json"
    assert cli_main(["eval-masks", "--data", str(manifest), "--pred", str(pred), "--out", str(out),
                     "--missing-as-empty"]) == 0
    printed = capsys.readouterr().out
    assert "gIoU" in printed and f"{(1 / 3 + 3) / 5:.4f}" in printed
    assert "missing predictions: 2 of 5" in printed
    written = json.loads(out.read_text())
    assert written["n_missing"] == 2 and written["missing"] == ["none", "lost"]
    assert written["ciou"] == pytest.approx(91 / 151)


def test_missing_predictions_are_an_error_unless_scored_as_empty(world: tuple[Path, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """Issue 18 item 6: a folder missing predictions prints no gIoU and exits non-zero (a no-target sample with no
    prediction would score 1); --missing-as-empty scores them as empty masks."""
    manifest, pred = world
    with pytest.raises(EvaluationError, match=r"2 of 5 samples have no prediction .*\(none, lost\)"):
        evaluate_predictions(load_samples(manifest), pred)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "m.json"
    assert cli_main(["eval-masks", "--data", str(manifest), "--pred", str(empty), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "gIoU" not in captured.out and not (tmp_path / "m.json").exists()
    assert captured.err.strip() == (f"segloop eval-masks: 5 of 5 samples have no prediction in {empty} (half, same, "
                                    "none, lost, ignored); score them as empty masks with --missing-as-empty")
    assert cli_main(["eval-masks", "--data", str(manifest), "--pred", str(empty), "--missing-as-empty"]) == 0
    assert "missing predictions: 5 of 5 scored as empty" in capsys.readouterr().out


def test_wrong_size_prediction_names_the_file(world: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    manifest, pred = world
    save_mask(np.ones((10, 12), bool), pred / "half.png")
    with pytest.raises(EvaluationError, match=r"half\.png: prediction is 12x10, image img\.png is 10x10"):
        evaluate_predictions(load_samples(manifest), pred, missing_as_empty=True)
    assert cli_main(["eval-masks", "--data", str(manifest), "--pred", str(pred), "--missing-as-empty"]) == 2
    err = capsys.readouterr().err
    assert "half.png" in err and "Traceback" not in err


def test_user_errors_are_one_line(tmp_path: Path, world: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    manifest, _ = world
    assert cli_main(["eval-masks", "--data", str(manifest), "--pred", str(tmp_path / "absent")]) == 2
    assert "no such prediction folder" in capsys.readouterr().err
    assert cli_main(["eval-masks", "--data", str(tmp_path / "nope.jsonl"), "--pred", str(tmp_path)]) == 2
    assert "no such manifest" in capsys.readouterr().err
