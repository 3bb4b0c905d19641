"""The one parser of data specs: every command reads ``--data`` through ``data.specs.load_samples``, so a
``synth:`` spec works in ``batch``, ``eval-masks``, ``export-verl`` and the trainers alike, and every
command's help lists the same forms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segloop.cli import main as cli_main
from segloop.data.readers import DatasetError, read_manifest
from segloop.data.specs import SPEC_FORMS, SynthSamples, decode, first_items, load_items, load_samples, write_world
from segloop.tools.images import load_mask, save_mask


def test_a_synth_spec_names_the_scenes_segloop_synth_writes(tmp_path: Path) -> None:
    manifest = write_world(tmp_path, n=3, seed=5, size=160, difficulty="easy", no_target_rate=0.5, progress=False)
    written = read_manifest(manifest)
    samples = load_samples("synth:easy:160:5:3:0.5")
    assert isinstance(samples, SynthSamples) and len(samples) == 3
    generated = decode(samples)
    for sample, item in zip(written, generated, strict=True):
        assert (item.sample.id, item.sample.query, item.sample.kind) == (sample.id, sample.query, sample.kind)
        from_disk = sample.load()
        assert np.array_equal(item.image, from_disk.image) and np.array_equal(item.mask, from_disk.mask)
    assert [s.id for s in samples[1:]] == [s.id for s in written[1:]]
    with pytest.raises(IndexError):
        samples[3]


@pytest.mark.parametrize("bad", ["synth:easy:160", "synth:weird:160:1:3", "synth:easy:160:1:3:2.0",
                                 "synth:easy:x:1:3", "synth:easy:64:1:3", "synth:easy:160:1:0"])
def test_a_bad_synth_spec_says_the_form(bad: str) -> None:
    with pytest.raises(DatasetError, match="synth"):
        load_samples(bad)


def test_a_path_that_is_nothing_lists_the_forms(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as raised:
        load_samples(tmp_path / "nowhere.jsonl")
    message = str(raised.value)
    assert "no such manifest" in message and all(form in message for form in SPEC_FORMS)


def test_file_samples_decode_at_once_synthetic_ones_when_indexed(tmp_path: Path) -> None:
    manifest = write_world(tmp_path, n=2, seed=1, size=128, difficulty="easy", no_target_rate=0.0, progress=False)
    assert isinstance(load_items(manifest), list)
    lazy = load_items("synth:easy:128:1:1000000")  # a million scenes: none is drawn until it is indexed
    assert len(lazy) == 1_000_000 and lazy[999_999].image.shape == (128, 128, 3)
    assert [item.sample.id for item in first_items("synth:easy:128:1:5", 2)] == ["synth_1_00000", "synth_1_00001"]


@pytest.mark.parametrize("command", [["batch", "--out", "X"], ["eval-masks", "--pred", "X"],
                                     ["export-verl", "--out", "X"], ["train", "sft", "--out", "X"],
                                     ["train", "grpo", "--model", "M", "--out", "X"]])
def test_every_data_flag_lists_every_spec_form(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    data_help = text.split("--data DATA", 1)[1]
    for form in SPEC_FORMS:
        assert form in data_help, (command, form)


def test_batch_eval_masks_and_export_verl_take_a_synth_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    spec = "synth:easy:384:5:3"
    assert cli_main(["batch", "--data", spec, "--policy", "oracle", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["n"] == 3 and metrics["giou"] > 0.5
    assert metrics["provenance"]["configuration"]["data"] == spec
    # The oracle's masks, scored again from their PNGs: the same gIoU.
    pred = tmp_path / "pred"
    pred.mkdir()
    for line in (tmp_path / "b" / "trajectories.jsonl").read_text().splitlines():
        sample_id = json.loads(line)["sample_id"]
        save_mask(load_mask(tmp_path / "b" / "episodes" / sample_id / "mask.png"), pred / f"{sample_id}.png")
    assert cli_main(["eval-masks", "--data", spec, "--pred", str(pred), "--out", str(tmp_path / "e.json")]) == 0
    scored = json.loads((tmp_path / "e.json").read_text())
    assert scored["giou"] == pytest.approx(metrics["giou"], abs=1e-6) and scored["n_missing"] == 0
    assert cli_main(["export-verl", "--data", spec, "--out", str(tmp_path / "v.parquet")]) == 0
    assert "wrote 3 rows" in capsys.readouterr().out
