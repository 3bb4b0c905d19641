"""The compact grounding policy: ``CompactNet`` behind the ``Policy`` and learnable-policy protocols.

Each turn it builds the network's inputs from what it has been shown, samples (or, greedy, takes the
most likely) action parts, and writes the same ``<tool_call>`` text any policy writes, with integer
coordinates in the current view's frame. A turn's decision is five parts: tool, box top-left cell, box
bottom-right cell (restricted to cells right of and below the top-left one, so every box is valid),
whether to add a point, the point's cell; parts the chosen tool does not use are masked out.

Concurrent episodes (a GRPO group) are answered in one forward pass: ``act`` queues its inputs and the
first caller of a loop iteration schedules one batched step for everything queued by then.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from agent.actions import InspectMask, Segment, Submit, ZoomIn, ZoomOut, format_call, parse_turn
from agent.policy import PolicyContext, PolicyTurn
from policies.compact.network import (
    MAX_DEPTH,
    PREVIOUS,
    STATE_SIZE,
    TOOLS,
    CompactConfig,
    CompactNet,
    build_vocabulary,
)
from rl.learnable import DecisionLogProbs
from tools.views import View, resize_mask_to_view

PARTS = ("tool", "top_left", "bottom_right", "use_point", "point")
N_PARTS = len(PARTS)
_BOXED = {TOOLS.index("zoom_in"), TOOLS.index("segment")}
_SEGMENT = TOOLS.index("segment")


@dataclass
class TurnRecord:
    """One decision: the network's inputs, the chosen index of each part (-1: unused) and the
    log-probs recorded when it was chosen (0 where unused)."""

    image: torch.Tensor      # uint8 (3, S, S)
    candidate: torch.Tensor  # bool (S, S)
    query: torch.Tensor      # long (L,)
    state: torch.Tensor      # float (STATE_SIZE,)
    parts: torch.Tensor      # long (N_PARTS,)
    log_probs: torch.Tensor  # float (N_PARTS,)


@dataclass
class _Episode:
    # Clean images of the views seen so far, by view box: the first image shown of a view is its
    # render; later images of it are overlays, and the candidate goes in its own channel instead.
    views: dict[tuple[int, int, int, int], np.ndarray] = field(default_factory=dict)
    turns: list[TurnRecord] = field(default_factory=list)


class CompactPolicy:
    """See the module docstring. Build with ``create`` (fresh) or ``from_pretrained`` (a directory)."""

    name = "compact"
    frame = "pixels"

    def __init__(self, config: CompactConfig, net: CompactNet | None = None, *, greedy: bool = False,
                 seed: int = 0, device: str = "cpu") -> None:
        self.config = config
        self.max_side = config.max_side
        self.device = torch.device(device)
        self.net = (net or CompactNet(config)).to(self.device)
        self.greedy = greedy
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self._episodes: dict[str, _Episode] = {}
        self._pending: list[tuple[dict[str, torch.Tensor], dict[str, Any], asyncio.Future]] = []

    # -- construction and persistence ----------------------------------------------------------------
    @classmethod
    def create(cls, queries: list[str], *, seed: int = 0, **config: Any) -> CompactPolicy:
        """A freshly initialised policy whose vocabulary is the words of ``queries``."""
        torch.manual_seed(seed)
        return cls(CompactConfig(vocabulary=build_vocabulary(queries), **config), seed=seed)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **options: Any) -> CompactPolicy:
        directory = Path(directory)
        try:
            config = CompactConfig.model_validate_json((directory / "config.json").read_text())
            state = load_file(str(directory / "model.safetensors"))
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{directory} is not a compact policy directory: {exc.filename} missing") from None
        net = CompactNet(config)
        net.load_state_dict(state)
        return cls(config, net, **options)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.config.model_dump(), indent=1))
        state = {k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"))

    def parameters(self):
        return self.net.parameters()

    def train(self, mode: bool = True) -> CompactPolicy:
        self.net.train(mode)
        return self

    # -- inputs ---------------------------------------------------------------------------------------
    def _inputs(self, context: PolicyContext) -> dict[str, torch.Tensor]:
        episode = self._episodes.setdefault(context.episode_id, _Episode())
        view = context.view
        key = view.box.as_tuple()
        if key not in episode.views:
            shown = [m.image_id for m in context.messages if m.image_id is not None]
            if not shown:
                raise ValueError("the transcript holds no image to act on")
            episode.views[key] = context.images[shown[-1]]
        size = self.config.input_size
        image = cv2.resize(np.ascontiguousarray(episode.views[key][..., :3]), (size, size),
                           interpolation=cv2.INTER_AREA)
        if context.candidate is not None and context.candidate.any():
            in_view = resize_mask_to_view(context.candidate, view).astype(np.uint8)
            candidate = cv2.resize(in_view, (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)
        else:
            candidate = np.zeros((size, size), dtype=bool)
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            "candidate": torch.from_numpy(candidate),
            "query": torch.tensor(self.config.word_ids(context.query), dtype=torch.long),
            "state": self._state(context, bool(candidate.any())),
        }

    @staticmethod
    def _state(context: PolicyContext, has_candidate: bool) -> torch.Tensor:
        """Previous tool (or none / unparsable), view depth, turn share, candidate present, last turn."""
        state = torch.zeros(STATE_SIZE)
        previous = "none"
        for message in reversed(context.messages):
            if message.role == "assistant":
                parsed = parse_turn(message.content)
                if parsed.action is None:
                    previous = "error"
                elif isinstance(parsed.action, Submit) and parsed.action.no_target:
                    previous = "submit_no_target"
                else:
                    previous = parsed.action.name
                break
        state[PREVIOUS.index(previous)] = 1.0
        state[len(PREVIOUS) + min(context.view_depth, MAX_DEPTH)] = 1.0
        base = len(PREVIOUS) + MAX_DEPTH + 1
        state[base] = context.turn / max(context.max_turns, 1)
        state[base + 1] = float(has_candidate)
        state[base + 2] = float(context.turn >= context.max_turns - 1)
        return state

    # -- acting ---------------------------------------------------------------------------------------
    async def act(self, context: PolicyContext) -> PolicyTurn:
        inputs = self._inputs(context)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((inputs, {"view": context.view}, future))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._step)
        parts, log_probs = await future
        return self._record(context, inputs, parts, log_probs, self._text(parts, context.view))

    def _step(self) -> None:
        """Sample (or argmax) the parts of every queued turn in one forward pass."""
        pending, self._pending = self._pending, []
        try:
            with torch.no_grad():
                out = self.net(*self._stack([p[0] for p in pending]))
                chosen = self._choose(out)
                lp, _, _ = self._part_log_probs(out, chosen)
        except Exception as exc:  # a failure belongs to every waiting episode, not to the loop
            for _, _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            return
        for i, (_, _, future) in enumerate(pending):
            if not future.done():
                future.set_result((chosen[i].cpu(), lp[i].cpu()))

    def _choose(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        n = out["tool"].shape[0]
        chosen = torch.full((n, N_PARTS), -1, dtype=torch.long)
        tool = self._pick(out["tool"])
        top_left = self._pick(out["top_left"])
        bottom_right = self._pick(self._restrict(out["bottom_right"], top_left))
        use_point = self._pick(out["use_point"])
        point = self._pick(out["point"])
        boxed = torch.tensor([int(t) in _BOXED for t in tool])
        segment = tool == _SEGMENT
        chosen[:, 0] = tool
        chosen[:, 1] = torch.where(boxed, top_left, -1)
        chosen[:, 2] = torch.where(boxed, bottom_right, -1)
        chosen[:, 3] = torch.where(segment, use_point, -1)
        chosen[:, 4] = torch.where(segment & (use_point == 1), point, -1)
        return chosen

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.detach().float().cpu()
        if self.greedy:
            return logits.argmax(-1)
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=self.generator)[:, 0]

    def _restrict(self, logits: torch.Tensor, top_left: torch.Tensor) -> torch.Tensor:
        """Bottom-right logits with cells left of or above the top-left cell removed."""
        grid = self.config.grid
        cells = torch.arange(grid * grid, device=logits.device)
        tl = top_left.clamp_min(0).to(logits.device)
        allowed = ((cells[None] % grid) >= (tl[:, None] % grid)) & ((cells[None] // grid) >= (tl[:, None] // grid))
        return logits.masked_fill(~allowed, float("-inf"))

    def _text(self, parts: torch.Tensor, view: View) -> str:
        tool = TOOLS[int(parts[0])]
        grid, width, height = self.config.grid, view.width, view.height
        if tool in ("zoom_in", "segment"):
            tl, br = int(parts[1]), int(parts[2])
            box = [math.floor((tl % grid) * width / grid), math.floor((tl // grid) * height / grid),
                   math.ceil((br % grid + 1) * width / grid), math.ceil((br // grid + 1) * height / grid)]
            box = [min(box[0], width - 1), min(box[1], height - 1), min(box[2], width), min(box[3], height)]
            if tool == "zoom_in":
                return format_call(ZoomIn(bbox_2d=box))
            points = None
            if int(parts[3]) == 1:
                cell = int(parts[4])
                points = [[min(round((cell % grid + 0.5) * width / grid), width - 1),
                           min(round((cell // grid + 0.5) * height / grid), height - 1)]]
            return format_call(Segment(bbox_2d=box, points_2d=points))
        if tool == "zoom_out":
            return format_call(ZoomOut())
        if tool == "inspect_mask":
            return format_call(InspectMask())
        return format_call(Submit(no_target=tool == "submit_no_target"))

    def _record(self, context: PolicyContext, inputs: dict[str, torch.Tensor], parts: torch.Tensor,
                log_probs: torch.Tensor, text: str) -> PolicyTurn:
        record = TurnRecord(inputs["image"], inputs["candidate"], inputs["query"], inputs["state"], parts,
                            log_probs)
        self._episodes[context.episode_id].turns.append(record)
        return PolicyTurn(text=text, decision=record)

    async def imitate(self, context: PolicyContext, text: str) -> PolicyTurn:
        """Record an expert's turn as this policy's decision: its action mapped to grid cells (a box to
        the cells holding its corners, the first positive point; other points cannot be expressed)."""
        parsed = parse_turn(text)
        if parsed.action is None:
            reason = parsed.error.message if parsed.error else text
            raise ValueError(f"the expert's turn is not a valid action: {reason}")
        inputs = self._inputs(context)
        action, view, grid = parsed.action, context.view, self.config.grid
        parts = torch.full((N_PARTS,), -1, dtype=torch.long)

        def cell(x: float, y: float, upper: bool = False) -> tuple[int, int]:
            fx, fy = x * grid / view.width, y * grid / view.height
            cx, cy = (math.ceil(fx) - 1, math.ceil(fy) - 1) if upper else (math.floor(fx), math.floor(fy))
            return min(max(cx, 0), grid - 1), min(max(cy, 0), grid - 1)

        if isinstance(action, Submit):
            parts[0] = TOOLS.index("submit_no_target" if action.no_target else "submit")
        else:
            parts[0] = TOOLS.index(action.name)
        if isinstance(action, (ZoomIn, Segment)):
            if action.bbox_2d is None:
                raise ValueError("the compact policy always segments with a box; the expert gave points only")
            x1, y1, x2, y2 = action.bbox_2d
            tlx, tly = cell(x1, y1)
            brx, bry = cell(x2, y2, upper=True)
            parts[1] = tly * grid + tlx
            parts[2] = max(bry, tly) * grid + max(brx, tlx)
        if isinstance(action, Segment):
            positives = [p for p, label in zip(action.points_2d or [], action.point_labels or [], strict=True)
                         if label == 1]
            parts[3] = int(bool(positives))
            if positives:
                px, py = cell(*positives[0])
                parts[4] = py * grid + px
        with torch.no_grad():
            out = self.net(*self._stack([inputs]))
            log_probs, _, _ = self._part_log_probs(out, parts[None])
        return self._record(context, inputs, parts, log_probs[0].cpu(), text)

    def end_episode(self, episode_id: str) -> list[TurnRecord] | None:
        episode = self._episodes.pop(episode_id, None)
        return None if episode is None else episode.turns

    # -- learning -------------------------------------------------------------------------------------
    def decisions(self, trajectory: Any) -> list[TurnRecord]:
        return trajectory.ledger

    def _stack(self, inputs: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        longest = max(len(i["query"]) for i in inputs)
        query = torch.zeros(len(inputs), longest, dtype=torch.long)
        for row, i in enumerate(inputs):
            query[row, : len(i["query"])] = i["query"]
        return (torch.stack([i["image"] for i in inputs]).to(self.device),
                torch.stack([i["candidate"] for i in inputs]).to(self.device),
                query.to(self.device),
                torch.stack([i["state"] for i in inputs]).to(self.device))

    def _part_log_probs(self, out: dict[str, torch.Tensor], chosen: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per turn and part: log-prob of the chosen index, mask (part used), entropy; (N, N_PARTS)."""
        chosen = chosen.to(out["tool"].device)
        logits = [out["tool"], out["top_left"], self._restrict(out["bottom_right"], chosen[:, 1]),
                  out["use_point"], out["point"]]
        mask = (chosen >= 0).float()
        log_probs, entropies = [], []
        for k, part_logits in enumerate(logits):
            log_p = torch.log_softmax(part_logits.float(), -1)
            index = chosen[:, k].clamp_min(0)
            log_probs.append(log_p.gather(1, index[:, None])[:, 0])
            p = log_p.exp()
            entropies.append(-(p * log_p.masked_fill(p == 0, 0.0)).sum(-1))
        return torch.stack(log_probs, 1) * mask, mask, torch.stack(entropies, 1) * mask

    def log_probs(self, records: list[list[TurnRecord]]) -> DecisionLogProbs:
        """One row per episode: its turns' parts in order, padded to the longest episode."""
        flat = [turn for episode in records for turn in episode]
        if not flat:
            raise ValueError("no decisions to score: every episode record is empty")
        out = self.net(*self._stack([{"image": t.image, "candidate": t.candidate, "query": t.query,
                                      "state": t.state} for t in flat]))
        chosen = torch.stack([t.parts for t in flat])
        lp, mask, entropy = self._part_log_probs(out, chosen)
        recorded = torch.stack([t.log_probs for t in flat]).to(lp.device) * mask
        width = max(len(e) for e in records) * N_PARTS
        return DecisionLogProbs(*self._rows(records, (lp, mask, recorded, entropy), width))

    @staticmethod
    def _rows(records: list[list[TurnRecord]], tensors: tuple[torch.Tensor, ...], width: int
              ) -> tuple[torch.Tensor, ...]:
        result = []
        for source in tensors:
            rows, start = [], 0
            for episode in records:
                flat = source[start : start + len(episode)].reshape(-1)
                rows.append(torch.nn.functional.pad(flat, (0, width - flat.numel())))
                start += len(episode)
            result.append(torch.stack(rows))
        return tuple(result)
