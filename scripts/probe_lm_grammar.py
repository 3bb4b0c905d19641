"""Has a language-model policy learned the tool grammar? Its greedy turn at each of the expert's own states.

A closed-loop evaluation mixes two skills: writing a valid call, and localising well enough that the
episode stays on the states seen in training (a tiny model that segments the wrong place sees "mask is
empty", which no expert episode contains, and its later turns degrade). This probe separates them: the
oracle drives each held-out episode through the real graph and tools, and at every turn the student,
given exactly that history as tokens, writes its own greedy turn, which is parsed and compared with the
expert's, then discarded (the expert's turn is what the ledger and the episode continue with).

Prints, by turn and overall: the share of well-formed calls (a closed ``<tool_call>`` whose JSON names a
tool with valid arguments), of those whose box (if any) is non-empty (x1 < x2, y1 < y2), and of those naming
the same tool as the expert.

    .venv/bin/python scripts/probe_lm_grammar.py --model runs/tiny_lm/sft3/final [--data synth:easy:256:1000:16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import defaultdict
from typing import Any

from segloop.agent.parser import parse_turn
from segloop.agent.policy import PolicyContext, PolicyTurn


class GrammarProbe:
    """The expert acts; the student writes its own greedy turn on the same tokens first, for the record."""

    def __init__(self, expert: Any, student: Any) -> None:
        self.expert, self.student = expert, student
        self.name, self.frame, self.max_side = "probe", student.frame, student.max_side
        self.turns: list[dict[str, Any]] = []

    async def act(self, context: PolicyContext) -> PolicyTurn:
        expert_turn = await self.expert.act(context)
        # propose generates without recording; imitate below records the expert's turn.
        mine = parse_turn(await self.student.propose(context))
        theirs = parse_turn(expert_turn.text)
        box = getattr(mine.action, "bbox_2d", None)
        self.turns.append({"turn": context.turn, "wellformed": mine.error is None,
                           "box_ok": mine.error is None and (box is None or (box[0] < box[2] and box[1] < box[3])),
                           "same_tool": mine.error is None and mine.action.name == theirs.action.name,
                           "expert_tool": theirs.action.name})
        return await self.student.imitate(context, expert_turn.text)

    def end_episode(self, episode_id: str) -> Any:
        self.expert.end_episode(episode_id)
        return self.student.end_episode(episode_id)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a transformers checkpoint directory")
    parser.add_argument("--data", default="synth:easy:256:1000:16", help="held-out episodes (a data spec)")
    parser.add_argument("--max-turns", type=int, default=8)
    args = parser.parse_args()

    import torch

    from segloop.agent.episode import Agent, EpisodeConfig
    from segloop.data.specs import load_items
    from segloop.policies.registry import load_learnable
    from segloop.policies.scripted import OraclePolicy
    from segloop.rl.rollout import run_episodes
    from segloop.tools.segmenters import build_segmenter

    torch.set_num_threads(1)
    student = load_learnable(args.model, greedy=True)
    probe = GrammarProbe(OraclePolicy(frame=student.frame, max_side=student.max_side), student)
    held_out = load_items(args.data)
    jobs = [(held_out[i], f"probe-{i}") for i in range(len(held_out))]
    asyncio.run(run_episodes(Agent(probe, build_segmenter("grabcut"), EpisodeConfig(max_turns=args.max_turns)),
                             jobs, concurrency=1))
    by_tool: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for turn in probe.turns:
        by_tool[turn["expert_tool"]].append(turn)

    def rates(turns: list[dict[str, Any]]) -> dict[str, float]:
        return {"n": len(turns), "wellformed": round(sum(t["wellformed"] for t in turns) / len(turns), 3),
                "box_ok": round(sum(t["box_ok"] for t in turns) / len(turns), 3),
                "same_tool": round(sum(t["same_tool"] for t in turns) / len(turns), 3)}

    print(json.dumps({"model": args.model, "episodes": len(jobs), "all_turns": rates(probe.turns),
                      "by_expert_tool": {name: rates(turns) for name, turns in sorted(by_tool.items())}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
