"""The compact grounding policy: ``CompactNet`` behind the ``Policy`` and learnable-policy protocols.

Each turn it builds the network's inputs from what it has been shown, samples (or, greedy, takes the
most likely) action parts, and writes the same ``<tool_call>`` text any policy writes, with integer
coordinates in the current view's frame. A turn's decision is six parts: tool, the box's centre cell,
its width and height bins (read at that cell; log-spaced shares of the view, so every box is valid),
whether to add a positive point, the point's cell; parts the chosen tool does not use are masked out.
Imitated turns (SFT) are recorded the same way, from the expert's text.

Concurrent episodes (a GRPO group) are answered in shared forward passes (``policies.batching``). Each
episode samples from its own generator, seeded from the episode's seed when it has one, so a seeded
episode makes the same choices whatever it was batched with.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from segloop.agent.actions import InspectMask, Segment, Submit, ZoomIn, ZoomOut, format_call, parse_turn
from segloop.agent.policy import PolicyContext, PolicyTurn
from segloop.policies.batching import TurnBatcher
from segloop.policies.compact import symmetry
from segloop.policies.compact.network import (
    MAX_DEPTH,
    PREVIOUS,
    STATE_SIZE,
    TOOLS,
    CompactConfig,
    CompactNet,
    build_vocabulary,
    words,
)
from segloop.policies.learnable import DecisionLogProbs
from segloop.tools.views import View, resize_mask_to_view

PARTS = ("tool", "centre", "width", "height", "use_point", "point")
N_PARTS = len(PARTS)
_BOXED = {TOOLS.index("zoom_in"), TOOLS.index("segment")}
_SEGMENT = TOOLS.index("segment")


@dataclass
class TurnRecord:
    """One decision: the network's inputs, the chosen index of each part (-1: unused), the log-probs
    recorded when it was chosen (0 where unused), and whether it imitates an expert."""

    image: torch.Tensor      # uint8 (3, S, S)
    candidate: torch.Tensor  # bool (S, S)
    query: torch.Tensor      # long (L,)
    state: torch.Tensor      # float (STATE_SIZE,)
    parts: torch.Tensor      # long (N_PARTS,)
    log_probs: torch.Tensor  # float (N_PARTS,)
    imitated: bool = False


@dataclass
class _Episode:
    generator: torch.Generator
    # Clean images of the views seen so far, by view box: the first image shown of a view is its
    # render; later images of it are overlays, and the candidate goes in its own channel instead.
    views: dict[tuple[int, int, int, int], np.ndarray] = field(default_factory=dict)
    turns: list[TurnRecord] = field(default_factory=list)


@dataclass
class _Request:
    inputs: dict[str, torch.Tensor]
    forced: torch.Tensor | None  # the parts to record instead of choosing (imitation)
    generator: torch.Generator


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
        self._word_maps = symmetry.word_permutations(config.vocabulary)
        self._episodes: dict[str, _Episode] = {}
        self.batcher = TurnBatcher(self._decide)

    # -- construction and persistence ----------------------------------------------------------------
    @classmethod
    def create(cls, queries: list[str], *, seed: int = 0, **config: Any) -> CompactPolicy:
        """A freshly initialised policy whose vocabulary is the words of ``queries``."""
        torch.manual_seed(seed)
        return cls(CompactConfig(vocabulary=build_vocabulary(queries), **config), seed=seed)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **options: Any) -> CompactPolicy:
        """The policy saved in ``directory``. It acts greedily (its most likely action, what it was
        trained towards) unless ``greedy=False`` is given; the trainers set ``greedy`` themselves."""
        unknown = set(options) - {"greedy", "seed", "device"}
        if unknown:  # e.g. lora_rank or gradient_checkpointing, which only language models take
            raise ValueError(f"the compact policy does not take {', '.join(sorted(unknown))}")
        options.setdefault("greedy", True)
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

    def unknown_words(self, query: str) -> list[str]:
        """The query's words outside the vocabulary (the network reads each as ``<unk>``)."""
        known = set(self.config.vocabulary)
        return [w for w in dict.fromkeys(words(query)) if w not in known]

    # -- inputs ---------------------------------------------------------------------------------------
    def _episode(self, context: PolicyContext) -> _Episode:
        episode = self._episodes.get(context.episode_id)
        if episode is None:
            seed = context.seed
            if seed is None:  # unseeded: drawn from the policy's own generator
                seed = int(torch.randint(2**62, (1,), generator=self.generator))
            episode = self._episodes[context.episode_id] = _Episode(torch.Generator().manual_seed(seed))
        return episode

    def _inputs(self, context: PolicyContext) -> dict[str, torch.Tensor]:
        episode = self._episode(context)
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
            if message.role == "user":  # a follow-up request starts afresh: earlier requests' turns do not count
                break
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
        parts, log_probs = await self.batcher.submit(_Request(inputs, None, self._episode(context).generator))
        return self._record(context, inputs, parts, log_probs, self.call_text(parts, context.view))

    def _decide(self, requests: list[_Request]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Sample (or argmax) the parts of every request in one forward pass; imitated turns keep the
        expert's parts and get their log-probs."""
        with torch.no_grad():
            out = self.net(*self._stack([r.inputs for r in requests]))
            chosen = torch.stack([r.forced if r.forced is not None else self._choose(out, row, r.generator)
                                  for row, r in enumerate(requests)])
            lp, _, _ = self._part_log_probs(out, chosen)
        return [(chosen[i].cpu(), lp[i].cpu()) for i in range(len(requests))]

    def _choose(self, out: dict[str, torch.Tensor], row: int, generator: torch.Generator) -> torch.Tensor:
        """The parts of one row of ``out``; parts the tool does not use are -1."""
        def pick(logits: torch.Tensor) -> int:
            logits = logits.detach().float().cpu()
            if self.greedy:
                return int(logits.argmax())
            return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))

        chosen = torch.full((N_PARTS,), -1, dtype=torch.long)
        tool = pick(out["tool"][row])
        chosen[0] = tool
        if tool in _BOXED:
            centre = pick(out["centre"][row])
            chosen[1] = centre
            chosen[2] = pick(out["width"][row, :, centre])
            chosen[3] = pick(out["height"][row, :, centre])
        if tool == _SEGMENT:
            use_point = pick(out["use_point"][row])
            chosen[4] = use_point
            if use_point == 1:
                chosen[5] = pick(out["point"][row])
        return chosen

    @staticmethod
    def _at(maps: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """Size logits (N, bins) read at each row's cell of (N, bins, grid**2) maps (-1: cell 0)."""
        index = cells.clamp_min(0).to(maps.device)[:, None, None].expand(-1, maps.shape[1], 1)
        return maps.gather(2, index)[..., 0]

    def call_text(self, parts: torch.Tensor, view: View) -> str:
        """The ``<tool_call>`` text of a decision's parts in ``view``'s frame."""
        tool = TOOLS[int(parts[0])]
        grid, width, height = self.config.grid, view.width, view.height
        if tool in ("zoom_in", "segment"):
            shares = self.config.size_shares()
            cell = int(parts[1])
            cx, cy = (cell % grid + 0.5) * width / grid, (cell // grid + 0.5) * height / grid
            half_w, half_h = shares[int(parts[2])] * width / 2, shares[int(parts[3])] * height / 2
            x1 = min(max(math.floor(cx - half_w), 0), width - 1)
            y1 = min(max(math.floor(cy - half_h), 0), height - 1)
            box = [x1, y1, max(min(math.ceil(cx + half_w), width), x1 + 1),
                   max(min(math.ceil(cy + half_h), height), y1 + 1)]
            if tool == "zoom_in":
                return format_call(ZoomIn(bbox_2d=box))
            points = None
            if int(parts[4]) == 1:
                point = int(parts[5])
                points = [[min(math.floor((point % grid + 0.5) * width / grid), width - 1),
                           min(math.floor((point // grid + 0.5) * height / grid), height - 1)]]
            return format_call(Segment(bbox_2d=box, points_2d=points))
        if tool == "zoom_out":
            return format_call(ZoomOut())
        if tool == "inspect_mask":
            return format_call(InspectMask())
        return format_call(Submit(no_target=tool == "submit_no_target"))

    def _record(self, context: PolicyContext, inputs: dict[str, torch.Tensor], parts: torch.Tensor,
                log_probs: torch.Tensor, text: str, imitated: bool = False) -> PolicyTurn:
        record = TurnRecord(inputs["image"], inputs["candidate"], inputs["query"], inputs["state"], parts,
                            log_probs, imitated)
        self._episodes[context.episode_id].turns.append(record)
        return PolicyTurn(text=text)

    async def imitate(self, context: PolicyContext, text: str) -> PolicyTurn:
        """Record an expert's turn as this policy's decision: a box as the cell holding its centre and
        the nearest size bins (log scale), the first positive point as its cell (other points cannot
        be expressed)."""
        parsed = parse_turn(text)
        if parsed.action is None:
            reason = parsed.error.message if parsed.error else text
            raise ValueError(f"the expert's turn is not a valid action: {reason}")
        inputs = self._inputs(context)
        action, view, grid = parsed.action, context.view, self.config.grid
        parts = torch.full((N_PARTS,), -1, dtype=torch.long)

        def cell(x: float, y: float) -> int:
            cx = min(max(math.floor(x * grid / view.width), 0), grid - 1)
            cy = min(max(math.floor(y * grid / view.height), 0), grid - 1)
            return cy * grid + cx

        log_shares = np.log(self.config.size_shares())

        def size_bin(share: float) -> int:
            return int(np.abs(log_shares - math.log(max(share, 1e-6))).argmin())

        if isinstance(action, Submit):
            parts[0] = TOOLS.index("submit_no_target" if action.no_target else "submit")
        else:
            parts[0] = TOOLS.index(action.name)
        if isinstance(action, (ZoomIn, Segment)):
            if action.bbox_2d is None:
                raise ValueError("the compact policy always segments with a box; the expert gave points only")
            x1, y1, x2, y2 = action.bbox_2d
            parts[1] = cell((x1 + x2) / 2, (y1 + y2) / 2)
            parts[2] = size_bin((x2 - x1) / view.width)
            parts[3] = size_bin((y2 - y1) / view.height)
        if isinstance(action, Segment):
            positives = [p for p, label in zip(action.points_2d or [], action.point_labels or [], strict=True)
                         if label == 1]
            parts[4] = int(bool(positives))
            if positives:
                parts[5] = cell(*positives[0])
        request = _Request(inputs, parts, self._episode(context).generator)
        parts, log_probs = await self.batcher.submit(request)
        return self._record(context, inputs, parts, log_probs, text, imitated=True)

    def end_episode(self, episode_id: str) -> list[TurnRecord] | None:
        episode = self._episodes.pop(episode_id, None)
        return None if episode is None else episode.turns

    # -- learning -------------------------------------------------------------------------------------
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
        logits = [out["tool"], out["centre"], self._at(out["width"], chosen[:, 1]),
                  self._at(out["height"], chosen[:, 1]), out["use_point"], out["point"]]
        mask = (chosen >= 0).float()
        log_probs, entropies = [], []
        for k, part_logits in enumerate(logits):
            log_p = torch.log_softmax(part_logits.float(), -1)
            index = chosen[:, k].clamp_min(0)
            log_probs.append(log_p.gather(1, index[:, None])[:, 0])
            entropies.append(-(log_p.exp() * log_p).sum(-1))
        return torch.stack(log_probs, 1) * mask, mask, torch.stack(entropies, 1) * mask

    def log_probs(self, records: list[list[TurnRecord]]) -> DecisionLogProbs:
        """One row per episode: its turns' parts in order, padded to the longest episode. While training
        with ``augment``, each imitated turn is scored under a random symmetry of the square (its
        ``recorded`` log-probs stay those of the turn as seen)."""
        flat = [turn for episode in records for turn in episode]
        if not flat:
            raise ValueError("no decisions to score: every episode record is empty")
        inputs, chosen_rows = [], []
        for t in flat:
            image, candidate, query, parts = t.image, t.candidate, t.query, t.parts
            if t.imitated and self.config.augment and self.net.training:
                k = int(torch.randint(8, (1,), generator=self.generator))
                image, candidate, query, parts = symmetry.apply(
                    k, image, candidate, query, parts, self._word_maps, self.config.grid,
                    cell_parts=(PARTS.index("centre"), PARTS.index("point")),
                    width_part=PARTS.index("width"), height_part=PARTS.index("height"))
            inputs.append({"image": image, "candidate": candidate, "query": query, "state": t.state})
            chosen_rows.append(parts)
        out = self.net(*self._stack(inputs))
        chosen = torch.stack(chosen_rows)
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
