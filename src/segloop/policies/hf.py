"""``TransformersPolicy``: any image-text-to-text checkpoint (Qwen2.5-VL, Qwen3-VL, ...) in this process,
keeping each episode as tokens (the token ledger, ``policies.ledger``) for RL.

Log-probs are those of the model's own distribution: ``log_softmax`` of the raw logits (temperature 1,
before temperature / top-p), the distribution ``rl.lm_tensors`` recomputes with one forward pass. Sampling
uses the temperature and top-p given, with the vision placeholder tokens suppressed.

Concurrent episodes share one model and generate together (``policies.batching``): whatever turns are
waiting when the model becomes free run as one left-padded ``generate`` (attention mask, the Qwen-VL rope
positions over each row's real tokens, every row's images concatenated in row order) in a worker thread. Each row
samples with its own generator seeded from its episode's seed and turn, so an episode's ledger (ids, mask,
log-probs) is what it would be generated alone, whatever it was batched with.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from segloop.agent.policy import PolicyContext, PolicyTurn
from segloop.policies.batching import TurnBatcher
from segloop.policies.ledger import (
    Generated,
    GenerateRequest,
    LedgerPolicy,
    TokenLedger,
    processor_max_side,
    turn_stops,
    vision_ids,
)
from segloop.tools.views import CoordFrame

__all__ = ["TokenLedger", "TransformersPolicy"]

Dtype = Literal["auto", "float32", "bfloat16", "float16"]


class _RowSampler:
    """A logits processor that picks every row's next token itself: vision placeholders suppressed, then
    (sampling) temperature, top-p and a draw from the row's own generator, returned as scores that are
    -inf except at the chosen token, so ``generate``'s greedy step takes exactly that token. Greedy rows
    (their generator None) only get the suppression."""

    def __init__(self, generators: list[Any], temperature: float, top_p: float, suppress: list[int]) -> None:
        self.generators = generators
        self.temperature = temperature
        self.top_p = top_p
        self.suppress = suppress

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        scores = scores.clone()
        if self.suppress:
            scores[:, self.suppress] = -torch.inf
        rows = [row for row, generator in enumerate(self.generators) if generator is not None]
        if not rows:
            return scores
        probs = torch.softmax(scores[rows].float() / self.temperature, -1)
        if self.top_p < 1:
            ordered, order = probs.sort(-1, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the most likely token always stays).
            drop = ordered.cumsum(-1) - ordered >= self.top_p
            probs = probs.scatter(-1, order, ordered.masked_fill(drop, 0.0))
        chosen = torch.stack([torch.multinomial(probs[i], 1, generator=self.generators[row])[0]
                              for i, row in enumerate(rows)])
        forced = torch.full_like(scores[rows], -torch.inf)
        forced[torch.arange(len(rows)), chosen] = 0.0
        scores[rows] = forced
        return scores


class TransformersPolicy(LedgerPolicy):
    """See the module docstring. ``model`` is a hub id or a directory; ``max_batch`` bounds how many
    concurrent turns one ``generate`` takes (1: one sequence at a time)."""

    name = "transformers"

    def __init__(self, model: str | Path, *, device: str = "cpu", dtype: Dtype = "float32",
                 temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 256, greedy: bool = False,
                 frame: CoordFrame = "pixels", max_side: int | None = None,
                 lora_rank: int | None = None, gradient_checkpointing: bool = False, max_batch: int = 32) -> None:
        import torch
        from transformers import AutoModelForImageTextToText

        from segloop.policies.processors import load_processor

        if temperature <= 0:
            raise ValueError("temperature must be > 0 (use greedy=True for the most likely tokens)")
        if not 0 < top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.model_name = str(model)
        self.device = torch.device(device)
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        try:
            processor = load_processor(self.model_name)
            self.model = AutoModelForImageTextToText.from_pretrained(self.model_name, dtype=torch_dtype)
        except OSError as exc:
            raise ValueError(f"cannot load model {self.model_name!r}: {str(exc).splitlines()[0]}") from None
        self.model.to(self.device)
        self.model.eval()
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        if lora_rank is not None:
            from peft import LoraConfig, get_peft_model

            # Only the language model's projections: the vision tower stays as pretrained.
            target = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
            self.model = get_peft_model(self.model, LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank,
                                                               target_modules=target, lora_dropout=0.0))
        eos = self.model.generation_config.eos_token_id
        stops = turn_stops(processor.tokenizer, [eos] if isinstance(eos, int) else list(eos or []))
        self.batcher = TurnBatcher(self.generate_batch, max_batch)
        super().__init__(processor, self.batcher.submit, stops=stops, frame=frame,
                         max_side=processor_max_side(processor, max_side, self.model_name))
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.greedy = greedy
        self.max_batch = max_batch
        self.lora = lora_rank is not None
        self._vision_ids = vision_ids(self.tokenizer)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **options: Any) -> TransformersPolicy:
        return cls(directory, **options)

    # -- generating -----------------------------------------------------------------------------------
    def _model_inputs(self, ledgers: Sequence[TokenLedger], rows: Sequence[list[int]]) -> dict[str, Any]:
        """Left-padded ``rows`` (token ids of ``ledgers``' episodes) with every row's images, in row order."""
        import torch

        width = max(len(ids) for ids in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in rows], device=self.device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows], device=self.device)
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention}
        pixel_values = [pv for ledger in ledgers for pv in ledger.pixel_values]
        if pixel_values:
            inputs["pixel_values"] = torch.cat(pixel_values).to(self.device, self.model.dtype)
            inputs["image_grid_thw"] = torch.stack([g for ledger in ledgers for g in ledger.image_grid_thw]
                                                   ).to(self.device)
            inputs["mm_token_type_ids"] = ((input_ids == self.processor.image_token_id) & attention.bool()).int()
        return inputs

    def _generators(self, requests: Sequence[GenerateRequest]) -> list[Any]:
        """Each request's sampling generator; None for a greedy one (its own ``greedy``, else the policy's)."""
        import torch

        generators = []
        for request in requests:
            greedy = self.greedy if request.greedy is None else request.greedy
            if greedy:
                generators.append(None)
                continue
            # Unseeded episodes draw their seed from torch's global generator (so torch.manual_seed governs them).
            seed = (request.seed * 1000 + request.turn if request.seed is not None
                    else int(torch.randint(0, 2**62, (1,)).item()))
            generators.append(torch.Generator().manual_seed(seed))
        return generators

    def generate_batch(self, requests: list[GenerateRequest]) -> list[Generated]:
        """One ``generate`` over the requests' ledgers; each row cut after its own stop (the batcher's lock is
        held by its caller)."""
        import torch

        ledgers = [request.ledger for request in requests]
        inputs = self._model_inputs(ledgers, [ledger.ids for ledger in ledgers])
        sampler = _RowSampler(self._generators(requests), self.temperature, self.top_p, self._vision_ids)
        with torch.no_grad():
            out = self.model.generate(
                **inputs, do_sample=False, temperature=None, top_p=None, top_k=None, logits_processor=[sampler],
                max_new_tokens=self.max_new_tokens, eos_token_id=list(self.stops.ids),
                pad_token_id=self.tokenizer.pad_token_id, stop_strings=list(self.stops.strings) or None,
                tokenizer=self.tokenizer if self.stops.strings else None,
                output_logits=True, return_dict_in_generate=True,
            )
        new = out.sequences[:, inputs["input_ids"].shape[1]:]
        logprobs = torch.log_softmax(torch.stack(out.logits, 1).float(), -1).gather(2, new[..., None])[..., 0]
        results = []
        for row in range(len(requests)):
            ids = new[row].tolist()
            n = self._turn_length(ids)
            results.append(Generated(ids[:n], logprobs[row, :n].tolist()))
        return results

    def _turn_length(self, ids: list[int]) -> int:
        """Tokens up to and including the row's first stop (the rest is padding after it finished)."""
        for k, token in enumerate(ids, 1):
            if token in self.stops.ids:
                return k
            if self.stops.strings and self.tokenizer.decode(ids[:k]).endswith(self.stops.strings):
                return k
        return len(ids)

    # -- expert turns ---------------------------------------------------------------------------------
    async def imitate(self, context: PolicyContext, text: str) -> PolicyTurn:
        """Record ``text`` as this turn's generation: tokenised (a closing ``</tool_call>`` is the stop token
        it would have generated) and scored by one forward pass."""
        episode = self._sync(context)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError("the expert's turn is empty")
        if any(i in self._vision_ids for i in ids):
            raise ValueError("the expert's turn contains vision placeholder tokens")
        logprobs = await asyncio.to_thread(self.score, episode.ledger, ids)
        return self._record(episode, ids, logprobs)

    def score(self, ledger: TokenLedger, ids: list[int]) -> list[float]:
        """Log-probs of ``ids`` appended to ``ledger`` under the current weights (one forward pass)."""
        import torch

        from segloop.policies.lm_tensors import ledger_batch, response_log_probs

        probe = TokenLedger(ids=[*ledger.ids, *ids], mask=[*ledger.mask, *[1] * len(ids)],
                            logprobs=[0.0] * (len(ledger.ids) + len(ids)), prompt_length=ledger.prompt_length,
                            images=ledger.images, pixel_values=ledger.pixel_values,
                            image_grid_thw=ledger.image_grid_thw)
        with self.batcher.lock, torch.no_grad():
            batch = ledger_batch([probe], self.model, pad_id=self.tokenizer.pad_token_id)
            logprobs, _ = response_log_probs(self.model, batch)
        return logprobs[0, -len(ids):].tolist()

    # -- learning -------------------------------------------------------------------------------------
    def parameters(self) -> list[Any]:
        """The trainable parameters (with LoRA, the adapter's only)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> TransformersPolicy:
        self.model.train(mode)
        return self

    def log_probs(self, records: Sequence[TokenLedger]) -> Any:
        """Per response token of each ledger: log-probs under the current weights (one forward pass)."""
        from segloop.policies.learnable import DecisionLogProbs
        from segloop.policies.lm_tensors import ledger_batch, response_log_probs

        if not records or not any(len(r) for r in records):
            raise ValueError("no decisions to score: every ledger is empty")
        batch = ledger_batch(list(records), self.model, pad_id=self.tokenizer.pad_token_id)
        logprobs, entropy = response_log_probs(self.model, batch)
        return DecisionLogProbs(logprobs, batch.response_mask, batch.recorded_log_probs, entropy)

    def save_pretrained(self, directory: str | Path) -> None:
        """A plain transformers checkpoint (a LoRA adapter is merged into a copy of the weights)."""
        model = copy.deepcopy(self.model).merge_and_unload() if self.lora else self.model
        model.save_pretrained(directory)
        self.processor.save_pretrained(directory)
