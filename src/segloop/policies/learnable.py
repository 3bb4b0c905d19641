"""The one contract both trainers (``segloop.rl.sft``, ``segloop.rl.grpo``) train through.

A *learnable policy* is an ``agent.policy.Policy`` that can also say how likely its own recorded
decisions are under its current parameters. The trainers never look behind this protocol: the same
SFT and GRPO code trains the compact grounding policy (decisions = action parts: tool, box corners,
point) and a transformers language model (decisions = generated tokens).

Units. The trainers work per *episode*: ``end_episode(episode_id)`` returns the episode's record (a
token ledger, or the compact policy's list of turn records) and the graph keeps it in
``Trajectory.ledger``. ``log_probs(records)`` scores a batch
of such records and returns ``(B, T)`` tensors, one row per episode, ``T`` its decision positions
(tokens, or action parts of all turns) padded to the longest row; ``mask`` is 1 exactly on the
positions the policy itself chose (0 on padding, prompt and observation tokens, parts not used by the
chosen tool). GRPO broadcasts one advantage per row over its masked positions.

Imitation. SFT needs the expert's turn recorded as if the student had written it: ``imitate(context,
text)`` is ``act`` with the text given instead of chosen (the student builds its inputs from the
context exactly as in ``act``, then records ``text`` as its decision; log-probs of a text it could not
have produced are the student's business: a language model tokenises it, the compact policy maps the
parsed action to its parts and raises ``ValueError`` for an action it cannot express).

Loading. ``save_pretrained(dir)`` writes a directory that ``policies.registry.load_learnable(dir)`` reads
back without being told which kind of policy it holds (the ``"segloop_policy"`` key of its ``config.json``).
The trainers pass ``lora_rank`` (int, wrap the model in a peft LoRA adapter) and ``gradient_checkpointing``
(bool) only when the user asks for them; a policy that cannot honour one raises ``ValueError`` naming it.

Sampling. Whether a turn samples (training rollouts) or takes the most likely action (evaluation) is asked per
episode, in ``PolicyContext.greedy``; no caller sets it on the policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from segloop.agent.policy import Policy, PolicyContext, PolicyTurn
from segloop.tools.views import CoordFrame


@dataclass
class DecisionLogProbs:
    """Log-probs of a batch of episode records under the current parameters.

    ``log_probs`` (B, T) is differentiable; ``mask`` (B, T) float, 1 on the policy's own decisions;
    ``recorded`` (B, T) the log-probs recorded when the decisions were taken (act time; no grad; equal
    to ``log_probs`` before any update, up to float error); ``entropy`` (B, T) the entropy of each
    decision's distribution where the policy can compute it cheaply, else None.
    """

    log_probs: torch.Tensor
    mask: torch.Tensor
    recorded: torch.Tensor
    entropy: torch.Tensor | None = None

    def __post_init__(self) -> None:
        shapes = {tuple(t.shape) for t in (self.log_probs, self.mask, self.recorded)}
        if self.entropy is not None:
            shapes.add(tuple(self.entropy.shape))
        if len(shapes) != 1 or self.log_probs.dim() != 2:
            raise ValueError(f"log_probs, mask, recorded (and entropy) must share one (B, T) shape, got {shapes}")


@runtime_checkable
class LearnablePolicy(Policy, Protocol):
    """A ``Policy`` the trainers can train."""

    name: str
    frame: CoordFrame
    max_side: int

    def parameters(self) -> Iterable[torch.nn.Parameter]:
        """The trainable parameters (with LoRA: the adapter's only)."""
        ...

    def train(self, mode: bool = True) -> Any:
        """Switch dropout etc. on (``mode=True``) or off, like ``torch.nn.Module.train``."""
        ...

    async def imitate(self, context: PolicyContext, text: str) -> PolicyTurn:
        """Record ``text`` (an expert's turn) as this policy's own decision for this turn."""
        ...

    def log_probs(self, records: Sequence[Any]) -> DecisionLogProbs:
        """Score a batch of episode records under the current parameters (see module docstring)."""
        ...

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the policy as a directory ``load_learnable`` reads back."""
        ...


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is 1 (0 when there are none)."""
    return (values * mask).sum() / mask.sum().clamp_min(1.0)
