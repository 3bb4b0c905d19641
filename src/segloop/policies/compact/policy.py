"""The compact grounding policy: two ``CompactNet``s behind the ``Policy`` and learnable-policy protocols.

Each turn it builds the network's inputs from what it has been shown, samples (or, greedy, takes the
most likely) action parts, and writes the same ``<tool_call>`` text any policy writes, with integer
coordinates in the current view's frame. A turn's decision is six parts: tool, the box's centre cell,
its width and height bins (read at that cell; log-spaced shares of the view, so every box is valid),
whether to add a positive point, the point's cell; parts the chosen tool does not use are masked out.
Imitated turns (SFT) are recorded the same way, from the expert's text.

Two stages, two networks of one architecture (``STAGES``): ``root`` acts on the full image (where is the
target: zoom onto a candidate, or "no such object"), ``zoomed`` on a zoomed view (is this the target:
segment it, correct the mask, submit, or zoom out). Why: the two decisions read different things (a
few-pixel object among look-alikes, against one object seen large), and one network trained on both
learnt the first-view heatmap far slower than one trained on first views alone (measured; notes in
docs/notes/grounding-on-cpu.md). The stage is the view depth, which the state vector holds.

Zooms (``config.zoom_context``): the parts of a zoom name the object to zoom onto, exactly as the parts
of a segment name the object to segment, and the zoom written is a square ``zoom_context`` times its
larger side around it (the expert's zoom rule). So the centre heatmap always means "where the target
is" and the size bins "how big it is", in every view and for both tools.

"Nothing here": imitated turns score the centre heatmap against one more option, a fixed logit 0 meaning
"no object in this view matches the query", and an expert's zoom_out or "no such object" is recorded as
that option (``nothing_cell``). Why: a softmax over cells alone is blind to the heatmap's level (adding a
constant to every cell changes nothing), so "is the target in this view" could not be read from it;
measured, the zoomed view's segment-or-leave decision stayed near chance for look-alikes. Against the
fixed option the level is learnt, and the tool head reads it (its peak and log-sum-exp). The policy's
own turns never choose it: for them the centre is a distribution over cells only, when acting and when
scored, so GRPO's ratios compare like with like.

Search memory: the policy follows the episode's views turn by turn; the object of a view it zoomed into
and then left (the view's central ``1 / zoom_context``) is "visited", painted into a plane of every
later input in the current view's frame, and the numbers of zooms and zoom-outs enter the state vector.
Legal actions: tools that cannot succeed in the state get no probability (zoom_out at the root, zoom_in
at ``max_depth``, submit without a candidate, "no such object" in a zoomed view, inspect_mask, whose
overlay the candidate plane already shows), and a zoom cannot name a visited object again. Both rules
read only the network's inputs, so acting and scoring agree.

Concurrent episodes (a GRPO group) are answered in shared forward passes (``policies.batching``). Each
episode samples from its own generator, seeded from the episode's seed when it has one, so a seeded
episode makes the same choices whatever it was batched with.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from segloop.agent.actions import InspectMask, Segment, Submit, ZoomIn, ZoomOut
from segloop.agent.parser import format_call, parse_turn
from segloop.agent.policy import PolicyContext, PolicyTurn
from segloop.policies.batching import TurnBatcher
from segloop.policies.compact import symmetry
from segloop.policies.compact.network import (
    MAX_COUNT,
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
STAGES = ("root", "zoomed")
_BOXED = {TOOLS.index("zoom_in"), TOOLS.index("segment")}
_SEGMENT = TOOLS.index("segment")
# Logit given to an illegal choice: exp() is exactly 0 in float32, yet entropies stay finite (0 * -1e4).
_ILLEGAL = -1e4
# State-vector slots the legal-action rules read.
_DEPTH = slice(len(PREVIOUS), len(PREVIOUS) + MAX_DEPTH + 1)
_HAS_CANDIDATE = len(PREVIOUS) + MAX_DEPTH + 2
Box = tuple[int, int, int, int]


@dataclass
class TurnRecord:
    """One decision: the network's inputs, the chosen index of each part (-1: unused), the log-probs
    recorded when it was chosen (0 where unused), and whether it imitates an expert."""

    image: torch.Tensor      # uint8 (3, S, S)
    candidate: torch.Tensor  # bool (S, S)
    visited: torch.Tensor    # bool (S, S)
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
    views: dict[Box, np.ndarray] = field(default_factory=dict)
    turns: list[TurnRecord] = field(default_factory=list)
    # Navigation, updated once per turn: the view boxes from the root to the current view, the objects
    # of the views zoomed into and left, and the counts of zooms and zoom-outs.
    path: list[Box] = field(default_factory=list)
    visited: list[tuple[float, float, float, float]] = field(default_factory=list)
    zooms: int = 0
    zoom_outs: int = 0
    last_turn: int = -1


@dataclass
class _Request:
    inputs: dict[str, torch.Tensor]
    forced: torch.Tensor | None  # the parts to record instead of choosing (imitation)
    greedy: bool
    generator: torch.Generator


def nothing_cell(config: CompactConfig) -> int:
    """The centre "cell" that records "no object in this view matches the query" (one past the grid)."""
    return config.grid * config.grid


class CompactPolicy:
    """See the module docstring. Build with ``create`` (fresh) or ``from_pretrained`` (a directory)."""

    name = "compact"
    frame = "pixels"

    def __init__(self, config: CompactConfig, nets: nn.ModuleDict | None = None, *, greedy: bool = False,
                 seed: int = 0, device: str = "cpu") -> None:
        self.config = config
        self.max_side = config.max_side
        self.device = torch.device(device)
        self.nets = (nets or nn.ModuleDict({stage: CompactNet(config) for stage in STAGES})).to(self.device)
        self.greedy = greedy
        # For the training-time symmetries and unseeded episodes; seeded episodes sample with their own.
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self._phrases = symmetry.phrase_tables(config.vocabulary)
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
        nets = nn.ModuleDict({stage: CompactNet(config) for stage in STAGES})
        try:
            nets.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{directory}: the weights do not fit this version's compact policy "
                             f"({str(exc).splitlines()[0]}); retrain it (scripts/train_default_agent.sh)") from None
        return cls(config, nets, **options)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.config.model_dump(), indent=1))
        state = {k: v.detach().contiguous().cpu() for k, v in self.nets.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"))

    def parameters(self, stages: tuple[str, ...] = STAGES) -> Iterator[nn.Parameter]:
        for stage in stages:
            yield from self.nets[stage].parameters()

    def train(self, mode: bool = True) -> CompactPolicy:
        self.nets.train(mode)
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

    def zooms_so_far(self, episode_id: str) -> int:
        """How many zooms the policy has followed in a running episode (0 for an unknown episode)."""
        episode = self._episodes.get(episode_id)
        return 0 if episode is None else episode.zooms

    def _navigate(self, episode: _Episode, context: PolicyContext) -> None:
        """Follow the view stack from one turn to the next (a refused zoom leaves it unchanged)."""
        if context.turn == episode.last_turn:
            return
        episode.last_turn = context.turn
        box, depth = context.view.box.as_tuple(), context.view_depth
        if not episode.path or (depth == 0 and len(episode.path) == 1):
            episode.path = [box]
        elif depth > len(episode.path) - 1:
            episode.zooms += 1
            episode.path.append(box)
        elif depth < len(episode.path) - 1:
            episode.zoom_outs += 1
            for x1, y1, x2, y2 in episode.path[depth + 1:]:
                # The object a zoom named is the central 1 / zoom_context of the view it made.
                half_w, half_h = (x2 - x1) / 2 / self.config.zoom_context, (y2 - y1) / 2 / self.config.zoom_context
                cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                episode.visited.append((cx - half_w, cy - half_h, cx + half_w, cy + half_h))
            episode.path = episode.path[: depth + 1]

    def _visited_plane(self, episode: _Episode, view: View) -> np.ndarray:
        """The visited objects in the view's frame at input size (True inside them)."""
        size = self.config.input_size
        plane = np.zeros((size, size), dtype=bool)
        b = view.box
        for x1, y1, x2, y2 in episode.visited:
            # Original pixels -> share of the view -> input pixels; regions outside the view vanish.
            left = math.floor((x1 - b.x1) / b.width * size)
            top = math.floor((y1 - b.y1) / b.height * size)
            right = math.ceil((x2 - b.x1) / b.width * size)
            bottom = math.ceil((y2 - b.y1) / b.height * size)
            plane[max(top, 0): max(min(bottom, size), 0), max(left, 0): max(min(right, size), 0)] = True
        return plane

    def inputs_of(self, context: PolicyContext) -> dict[str, torch.Tensor]:
        """The network's inputs for this turn (following the episode's views as it goes)."""
        episode = self._episode(context)
        self._navigate(episode, context)
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
            "visited": torch.from_numpy(self._visited_plane(episode, view)),
            "query": torch.tensor(self.config.word_ids(context.query), dtype=torch.long),
            "state": self._state(context, bool(candidate.any()), episode),
        }

    @staticmethod
    def _state(context: PolicyContext, has_candidate: bool, episode: _Episode) -> torch.Tensor:
        """Previous tool (or none / unparsable), view depth, turn share, candidate present, last turn,
        the zoom and zoom-out counts, the view's magnification."""
        state = torch.zeros(STATE_SIZE)
        previous = "none"  # also for a follow-up request: earlier requests' turns do not count
        if (last := context.last_turn) is not None:
            if last.action is None:
                previous = "error"
            elif isinstance(last.action, Submit) and last.action.no_target:
                previous = "submit_no_target"
            else:
                previous = last.action.name
        state[PREVIOUS.index(previous)] = 1.0
        state[len(PREVIOUS) + min(context.view_depth, MAX_DEPTH)] = 1.0
        base = len(PREVIOUS) + MAX_DEPTH + 1
        state[base] = context.turn / max(context.max_turns, 1)
        state[base + 1] = float(has_candidate)
        state[base + 2] = float(context.turn >= context.max_turns - 1)
        counts = base + 3
        state[counts + min(episode.zooms, MAX_COUNT)] = 1.0
        state[counts + MAX_COUNT + 1 + min(episode.zoom_outs, MAX_COUNT)] = 1.0
        view_side = max(context.view.box.width, context.view.box.height)
        state[counts + 2 * (MAX_COUNT + 1)] = math.log2(max(context.image_size) / view_side) / 4
        return state

    def legal_tools(self, state: torch.Tensor) -> torch.Tensor:
        """(N, len(TOOLS)) bool: the tools that can succeed in each state row."""
        depth = state[:, _DEPTH].argmax(1)
        has_candidate = state[:, _HAS_CANDIDATE] > 0.5
        legal = torch.ones(state.shape[0], len(TOOLS), dtype=torch.bool, device=state.device)
        legal[:, TOOLS.index("zoom_in")] = depth < self.config.max_depth
        legal[:, TOOLS.index("zoom_out")] = depth > 0
        legal[:, TOOLS.index("inspect_mask")] = False
        legal[:, TOOLS.index("submit")] = has_candidate
        legal[:, TOOLS.index("submit_no_target")] = depth == 0
        return legal

    def outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The logits of a stacked batch of inputs, each row by its stage's network, illegal choices
        masked: illegal tools, and centre cells of visited objects (a zoom cannot name one again)."""
        state = batch["state"]
        zoomed = state[:, _DEPTH].argmax(1) > 0
        out: dict[str, torch.Tensor] = {}
        for stage, rows in (("root", ~zoomed), ("zoomed", zoomed)):
            index = rows.nonzero()[:, 0]
            if not len(index):
                continue
            part = self.nets[stage](*(batch[k][index] for k in ("image", "candidate", "query", "state", "visited")))
            for key, value in part.items():
                if key not in out:
                    out[key] = value.new_zeros((len(state), *value.shape[1:]))
                out[key] = out[key].index_copy(0, index, value)
        out["tool"] = out["tool"].masked_fill(~self.legal_tools(state), _ILLEGAL)
        out["centre"] = out["centre"].masked_fill(self.visited_cells(batch["visited"]), _ILLEGAL)
        return out

    def visited_cells(self, visited: torch.Tensor) -> torch.Tensor:
        """(N, grid**2) bool: the centre cells a zoom may not name, from (N, S, S) visited planes. A view
        whose every cell was visited keeps its cells: the mask must leave some choice."""
        seen = F.adaptive_max_pool2d(visited.float()[:, None], self.config.grid).flatten(1) > 0
        return seen & ~seen.all(1, keepdim=True)

    # -- acting ---------------------------------------------------------------------------------------
    async def act(self, context: PolicyContext) -> PolicyTurn:
        inputs = self.inputs_of(context)
        episode = self._episode(context)
        greedy = self.greedy if context.greedy is None else context.greedy
        parts, log_probs = await self.batcher.submit(_Request(inputs, None, greedy, episode.generator))
        return self._record(context, inputs, parts, log_probs, self.call_text(parts, context.view))

    async def act_and_imitate(self, context: PolicyContext, expert: PolicyTurn, *, greedy: bool,
                              follow_expert: bool = False) -> PolicyTurn:
        """DAgger: the student chooses (greedy or sampled) what is executed, unless ``follow_expert``;
        the expert's action in this very state is what is recorded as the decision to learn. A label
        that is illegal in the state (e.g. the expert submits with no candidate, or zooms onto an object
        the student visited and left: the target it wrongly rejected) is recorded as no decision at all:
        its log-probability is -inf-like and would swamp the loss."""
        inputs = self.inputs_of(context)
        episode = self._episode(context)
        label = self.parts_of(expert.text, context.view, expert.info.get("zoom_target"))
        cell = int(label[1])
        if not bool(self.legal_tools(inputs["state"][None])[0, int(label[0])]) or (
                0 <= cell < self.config.grid**2 and bool(self.visited_cells(inputs["visited"][None])[0, cell])):
            label = torch.full((N_PARTS,), -1, dtype=torch.long)
        chosen, _ = await self.batcher.submit(_Request(inputs, None, greedy, episode.generator))
        text = expert.text if follow_expert else self.call_text(chosen, context.view)
        return self._record(context, inputs, label, torch.zeros(N_PARTS), text, imitated=True)

    def _decide(self, requests: list[_Request]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Sample (or argmax) the parts of every request in one forward pass; imitated turns keep the
        expert's parts and get their log-probs."""
        with torch.no_grad():
            out = self.outputs(self.stack([r.inputs for r in requests]))
            chosen = torch.stack([r.forced if r.forced is not None else self.choose(out, row, r.generator, r.greedy)
                                  for row, r in enumerate(requests)])
            imitated = torch.tensor([r.forced is not None for r in requests])
            lp, _, _ = self._part_log_probs(out, chosen, imitated)
        return [(chosen[i].cpu(), lp[i].cpu()) for i in range(len(requests))]

    @staticmethod
    def choose(out: dict[str, torch.Tensor], row: int, generator: torch.Generator, greedy: bool) -> torch.Tensor:
        """The parts of one row of ``out``; parts the tool does not use are -1."""
        def pick(logits: torch.Tensor) -> int:
            logits = logits.detach().float().cpu()
            if greedy:
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
        """Size logits (N, bins) read at each row's cell of (N, bins, grid**2) maps (-1 and "nothing":
        cell 0; those rows' size parts are unused)."""
        index = cells.clamp(0, maps.shape[2] - 1).to(maps.device)[:, None, None].expand(-1, maps.shape[1], 1)
        return maps.gather(2, index)[..., 0]

    def named_box(self, parts: torch.Tensor, view: View) -> list[float]:
        """The object box (model frame of ``view``) that a zoom's or segment's parts name."""
        grid, width, height = self.config.grid, view.width, view.height
        shares = self.config.size_shares()
        cell = int(parts[1])
        cx, cy = (cell % grid + 0.5) * width / grid, (cell // grid + 0.5) * height / grid
        half_w, half_h = shares[int(parts[2])] * width / 2, shares[int(parts[3])] * height / 2
        return [cx - half_w, cy - half_h, cx + half_w, cy + half_h]

    def call_text(self, parts: torch.Tensor, view: View) -> str:
        """The ``<tool_call>`` text of a decision's parts in ``view``'s frame."""
        tool = TOOLS[int(parts[0])]
        grid, width, height = self.config.grid, view.width, view.height
        if tool in ("zoom_in", "segment"):
            x1, y1, x2, y2 = self.named_box(parts, view)
            if tool == "zoom_in":
                # A square around the named object (in model pixels; the frame may be oblong).
                cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                half = self.config.zoom_context * max(x2 - x1, y2 - y1) / 2
                x1, y1, x2, y2 = cx - half, cy - half, cx + half, cy + half
            left = min(max(math.floor(x1), 0), width - 1)
            top = min(max(math.floor(y1), 0), height - 1)
            box = [left, top, max(min(math.ceil(x2), width), left + 1), max(min(math.ceil(y2), height), top + 1)]
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
        record = TurnRecord(inputs["image"], inputs["candidate"], inputs["visited"], inputs["query"],
                            inputs["state"], parts, log_probs, imitated)
        self._episode(context).turns.append(record)
        return PolicyTurn(text=text)

    def parts_of(self, text: str, view: View, zoom_target: list[float] | None = None) -> torch.Tensor:
        """An expert's turn as this policy's parts: a box as the cell holding its centre and the
        nearest size bins (log scale), the first positive point as its cell (other points cannot be
        expressed). A zoom names the object it zooms onto: ``zoom_target`` (its box in the view's frame,
        which the compact expert gives), else the zoom box shrunk ``zoom_context`` times. Raises
        ``ValueError`` for a text that is no valid action or a points-only segment."""
        parsed = parse_turn(text)
        if parsed.action is None:
            reason = parsed.error.message if parsed.error else text
            raise ValueError(f"the expert's turn is not a valid action: {reason}")
        action, grid = parsed.action, self.config.grid
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
        if isinstance(action, ZoomOut) or (isinstance(action, Submit) and action.no_target):
            parts[1] = nothing_cell(self.config)
        if isinstance(action, (ZoomIn, Segment)):
            if action.bbox_2d is None:
                raise ValueError("the compact policy always segments with a box; the expert gave points only")
            x1, y1, x2, y2 = action.bbox_2d
            shrink = 1.0
            if isinstance(action, ZoomIn):
                if zoom_target is not None:
                    x1, y1, x2, y2 = zoom_target
                else:
                    shrink = self.config.zoom_context
            parts[1] = cell((x1 + x2) / 2, (y1 + y2) / 2)
            parts[2] = size_bin((x2 - x1) / shrink / view.width)
            parts[3] = size_bin((y2 - y1) / shrink / view.height)
        if isinstance(action, Segment):
            positives = [p for p, label in zip(action.points_2d or [], action.point_labels or [], strict=True)
                         if label == 1]
            parts[4] = int(bool(positives))
            if positives:
                parts[5] = cell(*positives[0])
        return parts

    async def imitate(self, context: PolicyContext, text: str) -> PolicyTurn:
        """Record an expert's turn as this policy's decision (see ``parts_of``); the expert's text is
        what the episode executes."""
        parts = self.parts_of(text, context.view)
        inputs = self.inputs_of(context)
        request = _Request(inputs, parts, True, self._episode(context).generator)
        parts, log_probs = await self.batcher.submit(request)
        return self._record(context, inputs, parts, log_probs, text, imitated=True)

    def end_episode(self, episode_id: str) -> list[TurnRecord] | None:
        episode = self._episodes.pop(episode_id, None)
        return None if episode is None else episode.turns

    # -- learning -------------------------------------------------------------------------------------
    def stack(self, inputs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Turns' inputs as one batch (queries 0-padded to the longest)."""
        longest = max(len(i["query"]) for i in inputs)
        query = torch.zeros(len(inputs), longest, dtype=torch.long)
        for row, i in enumerate(inputs):
            query[row, : len(i["query"])] = i["query"]
        batch = {key: torch.stack([i[key] for i in inputs]) for key in ("image", "candidate", "visited", "state")}
        batch["query"] = query
        return {key: value.to(self.device) for key, value in batch.items()}

    def _part_log_probs(self, out: dict[str, torch.Tensor], chosen: torch.Tensor, imitated: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per turn and part: log-prob of the chosen index, mask (part used), entropy; (N, N_PARTS). An
        imitated turn's centre is scored against the "nothing here" option too (module docstring)."""
        chosen = chosen.to(out["tool"].device)
        nothing = torch.where(imitated.to(chosen.device)[:, None], 0.0, _ILLEGAL).to(out["centre"].dtype)
        logits = [out["tool"], torch.cat([out["centre"], nothing], 1), self._at(out["width"], chosen[:, 1]),
                  self._at(out["height"], chosen[:, 1]), out["use_point"], out["point"]]
        mask = (chosen >= 0).float()
        log_probs, entropies = [], []
        for k, part_logits in enumerate(logits):
            log_p = torch.log_softmax(part_logits.float(), -1)
            index = chosen[:, k].clamp_min(0)
            log_probs.append(log_p.gather(1, index[:, None])[:, 0])
            entropies.append(-(log_p.exp() * log_p).sum(-1))
        return torch.stack(log_probs, 1) * mask, mask, torch.stack(entropies, 1) * mask

    def augmented(self, turn: TurnRecord, k: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The turn's inputs and parts under symmetry ``k`` (0: as recorded)."""
        image, planes, query, parts = turn.image, [turn.candidate, turn.visited], turn.query, turn.parts
        if k:
            image, planes, query, parts = symmetry.apply(
                k, image, planes, query, parts, self._phrases, self.config.grid,
                cell_parts=(PARTS.index("centre"), PARTS.index("point")),
                width_part=PARTS.index("width"), height_part=PARTS.index("height"))
        inputs = {"image": image, "candidate": planes[0], "visited": planes[1], "query": query, "state": turn.state}
        return inputs, parts

    def log_probs(self, records: list[list[TurnRecord]]) -> DecisionLogProbs:
        """One row per episode: its turns' parts in order, padded to the longest episode. While training
        with ``augment``, each imitated turn is scored under a random symmetry of the square (its
        ``recorded`` log-probs stay those of the turn as seen)."""
        flat = [turn for episode in records for turn in episode]
        if not flat:
            raise ValueError("no decisions to score: every episode record is empty")
        inputs, chosen_rows = [], []
        training = self.nets.training and self.config.augment
        for t in flat:
            k = int(torch.randint(8, (1,), generator=self.generator)) if t.imitated and training else 0
            turn_inputs, parts = self.augmented(t, k)
            inputs.append(turn_inputs)
            chosen_rows.append(parts)
        out = self.outputs(self.stack(inputs))
        chosen = torch.stack(chosen_rows)
        lp, mask, entropy = self._part_log_probs(out, chosen, torch.tensor([t.imitated for t in flat]))
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
                flat = source[start: start + len(episode)].reshape(-1)
                rows.append(torch.nn.functional.pad(flat, (0, width - flat.numel())))
                start += len(episode)
            result.append(torch.stack(rows))
        return tuple(result)
