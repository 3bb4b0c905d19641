"""The language-model path of the trainers: the tool-use and valid-action rates they log, and the tiny
Qwen2.5-VL trained by `segloop train sft` then `segloop train grpo` through the CLI, end to end."""

from pathlib import Path

import pytest
import torch

from segloop.agent.records import Trajectory, TurnRecord
from segloop.evaluation.stats import episode_stats


def _trajectory(tools: list[str], invalid: int, submitted: bool) -> Trajectory:
    turns = [TurnRecord(turn=i, raw_text="", observation="", view_box=(0, 0, 8, 8), policy_s=0.0, tool_s=0.0)
             for i in range(len(tools) + invalid)]
    counts: dict[str, int] = {}
    for tool in tools:
        counts[tool] = counts.get(tool, 0) + 1
    return Trajectory(episode_id="e", thread_id="t", query="q", image_size=(8, 8), policy="p", frame="pixels",
                      max_side=8, max_turns=8, turns=turns, submitted=submitted, tool_counts=counts,
                      invalid_actions=invalid, final_mask_rle={})


def test_episode_stats_count_episodes_per_tool_and_valid_turns() -> None:
    rates = episode_stats([_trajectory(["zoom_in", "segment", "inspect_mask", "submit"], 0, True),
                        _trajectory(["segment", "segment"], 2, False)])
    assert rates["zoom_rate"] == rates["inspect_rate"] == rates["submit_rate"] == 0.5
    assert rates["segment_rate"] == 1.0
    assert rates["valid_rate"] == pytest.approx(6 / 8)  # 2 invalid turns of 8
    assert rates["turns"] == 4.0
    assert episode_stats([])["valid_rate"] == 0.0


@pytest.mark.slow
def test_tiny_lm_sft_then_grpo_through_the_cli(tmp_path: Path, tiny_model: Path) -> None:
    from segloop.cli import main as cli_main
    from segloop.policies.hf import TransformersPolicy
    from segloop.policies.registry import load_learnable
    from segloop.rl.curves import CurveLog

    torch.set_num_threads(1)
    model, held_out = str(tiny_model), "synth:easy:256:9:2"
    assert cli_main(["train", "sft", "--model", model, "--expert", "oracle", "--data", "synth:easy:256:1:4",
                     "--eval-data", held_out, "--eval-n", "2", "--out", str(tmp_path / "sft"), "--steps", "2",
                     "--batch-size", "2", "--eval-every", "2", "--max-turns", "2"]) == 0
    rows = CurveLog(tmp_path / "sft" / "sft_log.csv").rows()
    assert [r["step"] for r in rows if r["eval_giou"]] == ["0", "2"]
    # The untrained model writes no valid call yet; the rate is a share either way.
    assert all(0 <= float(r["eval_valid_rate"]) <= 1 for r in rows if r["eval_giou"])
    assert float(next(r for r in rows if r["step"] == "2")["loss"]) > 0
    assert isinstance(load_learnable(tmp_path / "sft" / "final"), TransformersPolicy)

    assert cli_main(["train", "grpo", "--model", str(tmp_path / "sft" / "final"), "--data", "synth:easy:256:2:100",
                     "--eval-data", held_out, "--eval-n", "1", "--out", str(tmp_path / "grpo"), "--steps", "1",
                     "--prompts-per-step", "1", "--group-size", "2", "--max-turns", "2", "--kl-coef", "0.01"]) == 0
    rows = CurveLog(tmp_path / "grpo" / "grpo_log.csv").rows()
    assert [r["step"] for r in rows] == ["0", "1"]
    trained = rows[1]
    assert 0 <= float(trained["valid_rate"]) <= 1 and float(trained["turns"]) >= 1
    assert float(trained["episodes_per_s"]) > 0 and float(trained["peak_mem_mb"]) > 0
    assert (tmp_path / "grpo" / "final" / "config.json").is_file()
