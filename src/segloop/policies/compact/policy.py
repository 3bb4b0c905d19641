"""The compact grounding policy: dense perception, the request read into slots, explicit referent scores,
and small learnt decisions, behind the ``Policy`` and learnable-policy protocols.

Each turn: the current view is perceived once (``perception.py``: the root network on the full view, the
zoom network on a zoomed one), its objects join the episode's belief (``reasoning.py``), the request's
referent scores are computed over the belief, and the turn's features (``decisions.py``) go to the
decision network of the view's depth, which chooses the action's parts (``actions.py``); the policy writes
them as ``<tool_call>`` text with integer coordinates in the current view's frame, like any policy.

Perception is trained densely before anything else (``segloop train pretrain``) and frozen after: SFT and
GRPO train the decisions (``parameters()`` are the decision networks'), each recorded turn being its
features (``Decision``), so re-scoring a turn never runs perception again.

Search memory: the object a zoom named, once the policy zoomed out of that view (or the zoom was refused),
is "visited": a zoom may not name it again, and its attributes stay as the zoomed view saw them. A segment
call that failed or gave an empty mask is not repeated: its cell is closed to segments in that view.
Concurrent episodes (a GRPO group, a batch) share forward passes (``policies.batching``); each episode
samples from its own generator, seeded from the episode's seed when it has one, so a seeded episode makes
the same choices whatever it was batched with.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

from segloop.agent.policy import PolicyContext, PolicyTurn
from segloop.policies.batching import TurnBatcher
from segloop.policies.compact import actions
from segloop.policies.compact.actions import PART, PARTS, TOOL, TOOLS
from segloop.policies.compact.decisions import (
    CELL,
    CELL_FEATURES,
    LOG_FLOOR,
    SCALAR,
    SCALAR_FEATURES,
    DecisionNet,
    TurnFeatures,
    choose,
    coverage,
    part_log_probs,
    stack,
)
from segloop.policies.compact.perception import PerceptionNet, detect
from segloop.policies.compact.query import KINDS, QuerySlots, read_query, unknown_words
from segloop.policies.compact.reasoning import ATTRIBUTES, Objects, merge_view, np_match, referent_scores
from segloop.policies.learnable import DecisionLogProbs
from segloop.tools.views import View, resize_mask_to_view

Box = tuple[int, int, int, int]
NETWORKS = ("root_perception", "zoom_perception", "root_decisions", "zoom_decisions")


class CompactConfig(BaseModel):
    """Everything needed to rebuild the networks and their inputs; saved as ``config.json``."""

    model_config = ConfigDict(extra="forbid")

    segloop_policy: Literal["compact"] = "compact"
    max_side: int = Field(224, ge=28, description="longest side of the views the policy asks to be shown")
    root_input: int = Field(128, ge=32, description="the full view is resized to this square for perception")
    zoom_input: int = Field(128, ge=32, description="a zoomed view is resized to this square for perception")
    grid: int = Field(32, ge=4, description="perception and decision cells per side")
    channels: int = Field(48, ge=8, description="perception's channels")
    dilations: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 1], description="perception's blocks")
    size_bins: int = Field(16, ge=2, description="log-spaced box sides, as a share of the view's side")
    min_share: float = Field(0.02, gt=0, lt=1, description="the smallest box side's share of the view")
    zoom_context: float = Field(4.0, gt=1, description="a zoom is a square this many times its object's side")
    max_depth: int = Field(1, ge=1, le=3, description="no zoom_in at this view depth")
    detect_threshold: float = Field(0.03, gt=0, lt=1, description="objectness a peak needs to be an object")
    max_objects: int = Field(40, ge=1, description="most objects detected in one view")


@dataclass
class Decision:
    """One recorded decision: the features it was made from, the chosen index of each part (-1: unused),
    their log-probs when chosen (0 where unused), and whether it imitates an expert."""

    features: TurnFeatures
    parts: torch.Tensor      # long (len(PARTS),)
    log_probs: torch.Tensor  # float (len(PARTS),)
    imitated: bool = False


@dataclass
class _Episode:
    generator: torch.Generator
    slots: QuerySlots
    # Perceived views by box: the objects seen and perception's maps (one row of the network's output).
    percepts: dict[Box, tuple[Objects, dict[str, torch.Tensor]]] = field(default_factory=dict)
    belief: Objects = field(default_factory=Objects.empty)
    decisions: list[Decision] = field(default_factory=list)
    # Navigation, updated once per turn: view boxes from the root to the current view, the object each zoom
    # on the path named, the objects of views zoomed into and left (centres, original pixels), counts, and
    # the cells closed to segments per view.
    path: list[Box] = field(default_factory=list)
    named: list[tuple[float, float]] = field(default_factory=list)
    visited: list[tuple[float, float]] = field(default_factory=list)
    zooms: int = 0
    failed: dict[Box, set[int]] = field(default_factory=dict)
    last_turn: int = -1
    last_view: View | None = None


@dataclass
class _Request:
    episode: _Episode
    view: View
    depth: int
    image: torch.Tensor | None  # the view at perception's input size, when not perceived yet
    magnification: float        # perception's scale input for the view
    scalars: dict[str, float]   # the episode-level scalars act() read from the context
    candidate: np.ndarray       # (G*G,) share of each cell the candidate covers
    forced: torch.Tensor | None  # parts to record instead of choosing (imitation)
    greedy: bool


def magnification(view_box: Box, image_size: tuple[int, int]) -> float:
    """Perception's scale input: log2 of the image's longest side over the view's, / 4 (0 for the full view)."""
    x1, y1, x2, y2 = view_box
    return math.log2(max(image_size) / max(x2 - x1, y2 - y1)) / 4


def perception_input(picture: np.ndarray, size: int) -> torch.Tensor:
    """A view's picture (H, W, 3+) as perception's (3, size, size) uint8 input."""
    picture = np.ascontiguousarray(picture[..., :3])
    shrinking = picture.shape[0] > size or picture.shape[1] > size
    picture = cv2.resize(picture, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return torch.from_numpy(picture).permute(2, 0, 1).contiguous()


class CompactPolicy:
    """See the module docstring. Build with ``create`` (fresh) or ``from_pretrained`` (a directory)."""

    name = "compact"
    frame = "pixels"

    def __init__(self, config: CompactConfig, networks: nn.ModuleDict | None = None, *, greedy: bool = False,
                 seed: int = 0, device: str = "cpu") -> None:
        self.config = config
        self.max_side = config.max_side
        self.device = torch.device(device)
        self.networks = (networks or self.build_networks(config)).to(self.device)
        self.greedy = greedy
        self.shares = actions.size_shares(config.size_bins, config.min_share)
        # For unseeded episodes; seeded episodes sample with their own generator.
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self._episodes: dict[str, _Episode] = {}
        self.batcher = TurnBatcher(self._decide)

    @staticmethod
    def build_networks(config: CompactConfig) -> nn.ModuleDict:
        def perception(size: int) -> PerceptionNet:
            return PerceptionNet(size, config.grid, config.channels, config.dilations, config.size_bins)

        return nn.ModuleDict({"root_perception": perception(config.root_input),
                              "zoom_perception": perception(config.zoom_input),
                              "root_decisions": DecisionNet(config.size_bins),
                              "zoom_decisions": DecisionNet(config.size_bins)})

    # -- construction and persistence ----------------------------------------------------------------
    @classmethod
    def create(cls, *, seed: int = 0, **config: Any) -> CompactPolicy:
        """A freshly initialised policy."""
        torch.manual_seed(seed)
        return cls(CompactConfig(**config), seed=seed)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **options: Any) -> CompactPolicy:
        """The policy saved in ``directory``. It acts greedily (its most likely action) unless
        ``greedy=False`` is given."""
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
        except ValueError as exc:
            first = str(exc).splitlines()[0]
            raise ValueError(f"{directory}: not a config of this version's compact policy ({first}); retrain it "
                             "(scripts/train_default_agent.sh)") from None
        networks = cls.build_networks(config)
        try:
            networks.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{directory}: the weights do not fit this version's compact policy "
                             f"({str(exc).splitlines()[0]}); retrain it (scripts/train_default_agent.sh)") from None
        return cls(config, networks, **options)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.config.model_dump(), indent=1))
        state = {k: v.detach().contiguous().cpu() for k, v in self.networks.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"))

    def perception(self, depth: int) -> PerceptionNet:
        return self.networks["root_perception" if depth == 0 else "zoom_perception"]  # type: ignore[return-value]

    def decisions(self, depth: int) -> DecisionNet:
        return self.networks["root_decisions" if depth == 0 else "zoom_decisions"]  # type: ignore[return-value]

    def parameters(self) -> Iterator[nn.Parameter]:
        """What SFT and GRPO train: the decision networks (perception is trained by ``train pretrain``)."""
        yield from self.networks["root_decisions"].parameters()
        yield from self.networks["zoom_decisions"].parameters()

    def train(self, mode: bool = True) -> CompactPolicy:
        self.networks.train(mode)
        return self

    def unknown_words(self, query: str) -> list[str]:
        """The request's content words outside the synthetic world's vocabulary (the policy cannot read them)."""
        return unknown_words(query)

    # -- one turn -------------------------------------------------------------------------------------
    def _episode(self, context: PolicyContext) -> _Episode:
        episode = self._episodes.get(context.episode_id)
        if episode is None:
            seed = context.seed
            if seed is None:  # unseeded: drawn from the policy's own generator
                seed = int(torch.randint(2**62, (1,), generator=self.generator))
            episode = _Episode(torch.Generator().manual_seed(seed), read_query(context.query))
            self._episodes[context.episode_id] = episode
        return episode

    def _named_point(self, parts: torch.Tensor, view: View) -> tuple[float, float]:
        """The centre (original pixels) of the object a zoom's or segment's parts name."""
        cell, grid = int(parts[PART["centre"]]), self.config.grid
        return view.to_original((cell % grid + 0.5) * view.width / grid, (cell // grid + 0.5) * view.height / grid)

    def _follow(self, episode: _Episode, context: PolicyContext, last_error: bool) -> None:
        """Update the episode's navigation for this turn: the view stack, visited objects (the object of a
        view left, and the object of a refused zoom), and the cells closed to segments."""
        if context.turn == episode.last_turn:
            return
        episode.last_turn = context.turn
        box, depth = context.view.box.as_tuple(), context.view_depth
        last = episode.decisions[-1] if episode.decisions else None
        if last is not None and episode.last_view is not None and int(last.parts[PART["tool"]]) >= 0:
            tool = TOOLS[int(last.parts[PART["tool"]])]
            candidate = context.candidate
            if tool == "segment" and (last_error or candidate is None or not candidate.any()):
                episode.failed.setdefault(episode.last_view.box.as_tuple(), set()).add(
                    int(last.parts[PART["centre"]]))
            if tool == "zoom_in":
                point = self._named_point(last.parts, episode.last_view)
                if last_error:  # a refused zoom: its object is not to be named again either
                    episode.visited.append(point)
                elif depth > len(episode.path) - 1:
                    episode.named.append(point)
        if not episode.path or (depth == 0 and len(episode.path) == 1):
            episode.path = [box]
        elif depth > len(episode.path) - 1:
            episode.zooms += 1
            episode.path.append(box)
        elif depth < len(episode.path) - 1:
            episode.visited += episode.named[depth:]
            episode.named = episode.named[:depth]
            episode.path = episode.path[: depth + 1]
        episode.last_view = context.view

    def _request(self, context: PolicyContext, forced: torch.Tensor | None, greedy: bool) -> _Request:
        """Everything a turn's decision needs from the context (following the episode's views as it goes)."""
        episode = self._episode(context)
        last_tool, last_error = "none", False  # also for a follow-up request: earlier requests' turns do not count
        if (last := context.last_turn) is not None:
            last_tool = "error" if last.action is None else last.action.name
            answer = context.messages[-1]
            last_error = last.action is None or (answer.role == "tool" and answer.content.startswith("Error"))
        self._follow(episode, context, last_error)
        view, grid = context.view, self.config.grid
        image = None
        if view.box.as_tuple() not in episode.percepts:
            shown = [m.image_id for m in context.messages if m.image_id is not None]
            if not shown:
                raise ValueError("the transcript holds no image to act on")
            size = self.config.root_input if context.view_depth == 0 else self.config.zoom_input
            image = perception_input(context.images[shown[-1]], size)
        candidate = np.zeros(grid * grid)
        has_candidate = context.candidate is not None and bool(context.candidate.any())
        if has_candidate:
            candidate = coverage(resize_mask_to_view(context.candidate, view), grid)
        turns_left = context.max_turns - context.turn
        last = last_tool if last_tool in ("zoom_in", "zoom_out", "segment", "submit", "error") else "none"
        scalars = {"has_candidate": float(has_candidate), "last_failed": float(last_error),
                   "candidate_empty": float(last_tool == "segment" and not has_candidate), f"last_{last}": 1.0,
                   f"zooms_{min(episode.zooms, 3)}": 1.0, f"turns_left_{min(max(turns_left, 1), 4)}": 1.0,
                   f"kind_{episode.slots.kind}": 1.0}
        scale = magnification(view.box.as_tuple(), context.image_size)
        return _Request(episode, view, context.view_depth, image, scale, scalars, candidate, forced, greedy)

    def features(self, request: _Request) -> TurnFeatures:
        """The turn's features (``decisions.py``) from the episode's belief and the current view's maps."""
        episode, view, config = request.episode, request.view, self.config
        grid, area = config.grid, config.grid**2
        box = view.box.as_tuple()
        seen, maps = episode.percepts[box]
        belief, slots = episode.belief, episode.slots
        scores = referent_scores(belief, slots)
        match = np_match(belief, slots.target)
        x1, y1, x2, y2 = box
        inside = (belief.x >= x1) & (belief.x < x2) & (belief.y >= y1) & (belief.y < y2)
        cells_of = (np.clip(((belief.y - y1) / (y2 - y1) * grid).astype(int), 0, grid - 1) * grid
                    + np.clip(((belief.x - x1) / (x2 - x1) * grid).astype(int), 0, grid - 1))
        visited = np.zeros(len(belief), dtype=bool)
        if episode.visited and len(belief):
            # A visited object is the one nearest the point its zoom named: within the root grid's cell it was
            # named by, or inside the object itself.
            root_cell = max(episode.path[0][2] - episode.path[0][0], episode.path[0][3] - episode.path[0][1]) / grid
            radius = np.maximum(0.75 * root_cell, np.maximum(belief.w, belief.h) / 2)
            for vx, vy in episode.visited:
                visited |= np.hypot(belief.x - vx, belief.y - vy) <= radius

        cells = torch.zeros(len(CELL_FEATURES), area)
        log_referent = np.full(area, LOG_FLOOR)
        for i in np.flatnonzero(inside):
            log_referent[cells_of[i]] = max(log_referent[cells_of[i]], math.log(max(scores[i], 1e-6)))
        cells[CELL["log_referent"]] = torch.from_numpy(log_referent)
        objectness = torch.sigmoid(maps["objectness"].float())
        probs = {name: torch.softmax(maps[name].float(), 0) for name in ATTRIBUTES}

        def dense_match(phrase: Any) -> torch.Tensor:
            m = objectness.clone()
            if phrase is not None:
                for name, values in ATTRIBUTES.items():
                    value = getattr(phrase, name)
                    if value is not None:
                        m = m * probs[name][values.index(value)]
            return m.clamp_min(1e-6).log()

        cells[CELL["log_match"]] = dense_match(slots.target)
        if slots.anchor is not None:
            cells[CELL["log_anchor_match"]] = dense_match(slots.anchor)
        cells[CELL["log_objectness"]] = objectness.clamp_min(1e-6).log()
        cells[CELL["visited"], torch.from_numpy(cells_of[inside & visited])] = 1.0
        cells[CELL["candidate"]] = torch.from_numpy(request.candidate).float()
        ys, xs = torch.arange(area) // grid, torch.arange(area) % grid
        cells[CELL["centre_prior"]] = -(((xs + 0.5) / grid - 0.5) ** 2 + ((ys + 0.5) / grid - 0.5) ** 2) * 4
        failed = torch.zeros(area, dtype=torch.bool)
        failed[list(episode.failed.get(box, ()))] = True
        cells[CELL["failed"]] = failed.float()
        for k, fill in enumerate(("solid", "striped", "hollow")):
            cells[CELL[fill]] = probs["fill"][k]
        detected = torch.zeros(area, dtype=torch.bool)
        seen_cells = (np.clip(((seen.y - y1) / (y2 - y1) * grid).astype(int), 0, grid - 1) * grid
                      + np.clip(((seen.x - x1) / (x2 - x1) * grid).astype(int), 0, grid - 1))
        detected[torch.from_numpy(seen_cells)] = True
        cells[CELL["detected"]] = detected.float()

        zoom_cells = torch.zeros(area, dtype=torch.bool)
        zoom_cells[torch.from_numpy(cells_of[inside & ~visited])] = True
        segment_cells = (detected if detected.any() else torch.ones(area, dtype=torch.bool)) & ~failed

        scalars = torch.zeros(len(SCALAR_FEATURES))
        for name, value in request.scalars.items():
            scalars[SCALAR[name]] = value

        def log_max(values: np.ndarray) -> float:
            return math.log(max(float(values.max()), 1e-6)) if len(values) else LOG_FLOOR

        scalars[SCALAR["log_referent_sum"]] = math.log(max(float(scores.sum()), 1e-6))
        scalars[SCALAR["log_none_match"]] = float(np.log1p(-match).sum())
        scalars[SCALAR["log_best_unvisited"]] = log_max(scores[~visited])
        scalars[SCALAR["log_best_visited"]] = log_max(scores[visited])
        scalars[SCALAR["log_referent_outside_view"]] = math.log(max(float(scores[~inside].sum()), 1e-6))
        if request.depth > 0 and inside.any():
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            distance = np.where(inside, np.hypot(belief.x - cx, belief.y - cy), np.inf)
            central = int(distance.argmin())
            if distance[central] < max(x2 - x1, y2 - y1) / config.zoom_context:
                others = inside.copy()
                others[central] = False
                scalars[SCALAR["log_central_referent"]] = math.log(max(scores[central], 1e-6))
                scalars[SCALAR["log_central_match"]] = math.log(max(match[central], 1e-6))
                scalars[SCALAR["log_best_other_in_view"]] = log_max(scores[others])
                if request.scalars["has_candidate"]:
                    half_w = belief.w[central] / 2 / (x2 - x1) * grid
                    half_h = belief.h[central] / 2 / (y2 - y1) * grid
                    ccx, ccy = (belief.x[central] - x1) / (x2 - x1) * grid, (belief.y[central] - y1) / (y2 - y1) * grid
                    in_box = ((xs + 0.5 - ccx).abs() <= half_w + 0.5) & ((ys + 0.5 - ccy).abs() <= half_h + 0.5)
                    mask = torch.from_numpy(request.candidate > 0.25)
                    union = (in_box | mask).sum().clamp_min(1)
                    scalars[SCALAR["candidate_covers_central"]] = float((in_box & mask).sum() / union)
            else:
                scalars[SCALAR["log_central_referent"]] = LOG_FLOOR
                scalars[SCALAR["log_central_match"]] = LOG_FLOOR
        legal = torch.ones(len(TOOLS), dtype=torch.bool)
        legal[TOOL["zoom_in"]] = request.depth < config.max_depth and bool(zoom_cells.any())
        legal[TOOL["zoom_out"]] = request.depth > 0
        legal[TOOL["segment"]] = bool(segment_cells.any())
        legal[TOOL["submit"]] = bool(request.scalars["has_candidate"])
        legal[TOOL["submit_no_target"]] = request.depth == 0
        sizes = torch.stack([maps["width"].float(), maps["height"].float()])
        return TurnFeatures(request.depth, cells.half(), scalars, legal, zoom_cells, segment_cells, sizes.half())

    def _decide(self, requests: list[_Request]) -> list[tuple[Decision, str]]:
        """Perceive the views not seen yet and decide every request, in shared forward passes."""
        with torch.no_grad():
            for depth in (0, 1):
                todo = [r for r in requests if r.image is not None and (r.depth > 0) == (depth > 0)]
                if not todo:
                    continue
                out = self.perception(depth)(torch.stack([r.image for r in todo]).to(self.device),
                                             torch.tensor([r.magnification for r in todo], device=self.device))
                for row, request in enumerate(todo):
                    maps = {k: v[row].cpu() for k, v in out.items()}
                    box = request.view.box.as_tuple()
                    seen = detect(maps, box, torch.from_numpy(self.shares).float(), self.config.detect_threshold,
                                  self.config.max_objects)
                    episode = request.episode
                    episode.percepts[box] = (seen, maps)
                    episode.belief = seen if request.depth == 0 else merge_view(episode.belief, seen, box)
                    request.image = None
            features = [self.features(r) for r in requests]
            results: list[tuple[Decision, str] | None] = [None] * len(requests)
            for depth in (0, 1):
                rows = [i for i, r in enumerate(requests) if (r.depth > 0) == (depth > 0)]
                if not rows:
                    continue
                batch = stack([features[i] for i in rows])
                net = self.decisions(depth)
                chosen = choose(net, batch, [requests[i].greedy for i in rows],
                                [requests[i].episode.generator for i in rows])
                recorded = torch.stack([requests[i].forced if requests[i].forced is not None else chosen[j]
                                        for j, i in enumerate(rows)])
                log_probs, _, _ = part_log_probs(net(batch, recorded), recorded)
                for j, i in enumerate(rows):
                    request = requests[i]
                    decision = Decision(features[i], recorded[j], log_probs[j], imitated=request.forced is not None)
                    text = actions.call_text(chosen[j], request.view, self.config.grid, self.shares,
                                             self.config.zoom_context)
                    results[i] = (decision, text)
        return [r for r in results if r is not None]

    def _record(self, episode: _Episode, decision: Decision, text: str) -> PolicyTurn:
        episode.decisions.append(decision)
        return PolicyTurn(text=text)

    async def act(self, context: PolicyContext) -> PolicyTurn:
        request = self._request(context, None, self.greedy if context.greedy is None else context.greedy)
        decision, text = await self.batcher.submit(request)
        return self._record(request.episode, decision, text)

    def label(self, text: str, context: PolicyContext, features: TurnFeatures,
              zoom_target: list[float] | None = None) -> torch.Tensor:
        """An expert's turn as this policy's parts in this state; parts it cannot take here are -1. An
        illegal tool is no decision at all; a cell the tool may not name becomes the nearest one it may
        within the named object (a detection is the object's centre only to a cell or two), else the
        object parts are left unlabelled."""
        grid = self.config.grid
        parts = actions.parts_of(text, context.view, grid, self.shares, self.config.zoom_context, zoom_target)
        tool = int(parts[PART["tool"]])
        if not bool(features.legal_tools[tool]):
            return actions.unused()
        cell = int(parts[PART["centre"]])
        if cell >= 0:
            legal = features.zoom_cells if tool == TOOL["zoom_in"] else features.segment_cells
            if not bool(legal[cell]):
                # Half the object's smaller side, in cells (at least one cell).
                reach = max(1.0, min(self.shares[int(parts[PART["width"]])], self.shares[int(parts[PART["height"]])])
                            * grid / 2)
                cells = legal.nonzero()[:, 0]
                distance = torch.maximum((cells % grid - cell % grid).abs(), (cells // grid - cell // grid).abs())
                if len(cells) and float(distance.min()) <= reach:
                    parts[PART["centre"]] = int(cells[distance.argmin()])
                else:
                    for part in ("centre", "width", "height", "point", "point_cell"):
                        parts[PART[part]] = -1
        return parts

    async def act_and_imitate(self, context: PolicyContext, expert: PolicyTurn, *, greedy: bool,
                              follow_expert: bool = False) -> PolicyTurn:
        """DAgger: the student chooses what is executed (greedy or sampled) unless ``follow_expert``; the
        expert's action in this very state is what is recorded as the decision to learn."""
        request = self._request(context, None, greedy)
        decision, text = await self.batcher.submit(request)
        parts = self.label(expert.text, context, decision.features, expert.info.get("zoom_target"))
        imitated = Decision(decision.features, parts, torch.zeros(len(PARTS)), imitated=True)
        return self._record(request.episode, imitated, expert.text if follow_expert else text)

    async def imitate(self, context: PolicyContext, text: str) -> PolicyTurn:
        """Record an expert's turn as this policy's decision; the expert's text is what the episode executes."""
        request = self._request(context, None, True)
        decision, _ = await self.batcher.submit(request)
        parts = self.label(text, context, decision.features)
        return self._record(request.episode, Decision(decision.features, parts, torch.zeros(len(PARTS)), True), text)

    def end_episode(self, episode_id: str) -> list[Decision] | None:
        episode = self._episodes.pop(episode_id, None)
        return None if episode is None else [d for d in episode.decisions if bool((d.parts >= 0).any())]

    # -- learning -------------------------------------------------------------------------------------
    def log_probs(self, records: list[list[Decision]]) -> DecisionLogProbs:
        """One row per episode: its decisions' parts in order, padded to the longest episode."""
        flat = [d for episode in records for d in episode]
        if not flat:
            raise ValueError("no decisions to score: every episode record is empty")
        n = len(flat)
        log_probs = torch.zeros(n, len(PARTS))
        mask = torch.zeros(n, len(PARTS))
        entropy = torch.zeros(n, len(PARTS))
        for depth in (0, 1):
            rows = [i for i, d in enumerate(flat) if (d.features.depth > 0) == (depth > 0)]
            if not rows:
                continue
            chosen = torch.stack([flat[i].parts for i in rows])
            lp, m, ent = part_log_probs(self.decisions(depth)(stack([flat[i].features for i in rows]), chosen), chosen)
            index = torch.tensor(rows)
            log_probs = log_probs.index_copy(0, index, lp)
            mask = mask.index_copy(0, index, m)
            entropy = entropy.index_copy(0, index, ent)
        recorded = torch.stack([d.log_probs for d in flat]) * mask
        width = max(len(e) for e in records) * len(PARTS)
        rows_out = []
        for source in (log_probs, mask, recorded, entropy):
            padded, start = [], 0
            for episode in records:
                flat_row = source[start: start + len(episode)].reshape(-1)
                padded.append(torch.nn.functional.pad(flat_row, (0, width - flat_row.numel())))
                start += len(episode)
            rows_out.append(torch.stack(padded))
        return DecisionLogProbs(*rows_out)


__all__ = ["KINDS", "NETWORKS", "CompactConfig", "CompactPolicy", "Decision"]
