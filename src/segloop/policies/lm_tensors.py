"""Token ledgers (``policies.hf.TokenLedger``) as training tensors, and their log-probs by one forward pass.

Layout (verl's): each episode is its prompt (the first chat-template call) followed by its response (every
later token: the policy's generations and the observation tokens in between). Prompts are left-padded to
the longest prompt, responses right-padded to the longest response, so all responses start at one column.
``response_mask`` is 1 exactly on the policy's own generated tokens: 0 on observation text, image tokens and
padding. Image inputs of the whole batch are concatenated in the order their image tokens appear (row by
row), which is the order the model consumes them. Positions are Qwen-VL's multimodal rope ids
(``get_rope_index``: images take 2-D positions), computed over each row's real tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class LMBatch:
    prompt_ids: torch.Tensor          # (B, P) long, left-padded
    response_ids: torch.Tensor        # (B, R) long, right-padded
    input_ids: torch.Tensor           # (B, P + R)
    attention_mask: torch.Tensor      # (B, P + R) long
    position_ids: torch.Tensor        # (3, B, P + R) long
    response_mask: torch.Tensor       # (B, R) float, 1 on generated tokens
    recorded_log_probs: torch.Tensor  # (B, R) float, 0 where response_mask is 0
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None


def ledger_parts(ledger: Any) -> dict[str, list]:
    """One ledger split at its prompt: the lists an ``AgentLoopOutput``-style record holds."""
    p = ledger.prompt_length
    return {"prompt_ids": ledger.ids[:p], "response_ids": ledger.ids[p:], "response_mask": ledger.mask[p:],
            "response_logprobs": ledger.logprobs[p:]}


def _vision_language_model(model: Any) -> Any:
    """The inner model that owns ``get_rope_index`` (through a peft wrapper, if any)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", base)
    if not hasattr(inner, "get_rope_index"):
        raise ValueError(f"{type(base).__name__} has no multimodal rope index (not a Qwen-VL-style model)")
    return inner


def ledger_batch(ledgers: Sequence[Any], model: Any, pad_id: int) -> LMBatch:
    """The batch tensors of ``ledgers`` on the model's device."""
    if not ledgers:
        raise ValueError("no ledgers to batch")
    for ledger in ledgers:
        if not (len(ledger.ids) == len(ledger.mask) == len(ledger.logprobs)):
            raise ValueError("a ledger's ids, mask and logprobs differ in length")
        if any(ledger.mask[: ledger.prompt_length]):
            raise ValueError("a ledger marks prompt tokens as generated")
    device = next(model.parameters()).device
    parts = [ledger_parts(ledger) for ledger in ledgers]
    p_len = max(len(x["prompt_ids"]) for x in parts)
    r_len = max(len(x["response_ids"]) for x in parts)
    b = len(ledgers)
    prompt = torch.full((b, p_len), pad_id, dtype=torch.long)
    response = torch.full((b, r_len), pad_id, dtype=torch.long)
    attention = torch.zeros((b, p_len + r_len), dtype=torch.long)
    mask = torch.zeros((b, r_len))
    recorded = torch.zeros((b, r_len))
    for row, x in enumerate(parts):
        n_p, n_r = len(x["prompt_ids"]), len(x["response_ids"])
        prompt[row, p_len - n_p:] = torch.tensor(x["prompt_ids"], dtype=torch.long)
        response[row, :n_r] = torch.tensor(x["response_ids"], dtype=torch.long)
        attention[row, p_len - n_p: p_len + n_r] = 1
        mask[row, :n_r] = torch.tensor(x["response_mask"], dtype=torch.float)
        recorded[row, :n_r] = torch.tensor(x["response_logprobs"], dtype=torch.float)
    recorded *= mask
    input_ids = torch.cat([prompt, response], 1)
    pixel_values = [pv for ledger in ledgers for pv in ledger.pixel_values]
    grids = [g for ledger in ledgers for g in ledger.image_grid_thw]
    image_token = model.config.image_token_id
    n_image_tokens = int(((input_ids == image_token) & attention.bool()).sum())
    merge = model.config.vision_config.spatial_merge_size ** 2
    expected = sum(int(g.prod()) // merge for g in grids)
    if n_image_tokens != expected:
        raise ValueError(f"the ledgers hold {n_image_tokens} image tokens but their images make {expected}")
    grid = torch.stack([torch.as_tensor(g) for g in grids]).to(device) if grids else None
    mm_types = ((input_ids == image_token) & attention.bool()).int().to(device)
    input_ids, attention = input_ids.to(device), attention.to(device)
    position_ids, _ = _vision_language_model(model).get_rope_index(
        input_ids, mm_token_type_ids=mm_types, image_grid_thw=grid, attention_mask=attention)
    return LMBatch(
        prompt_ids=prompt.to(device), response_ids=response.to(device), input_ids=input_ids,
        attention_mask=attention, position_ids=position_ids, response_mask=mask.to(device),
        recorded_log_probs=recorded.to(device),
        pixel_values=torch.cat(pixel_values).to(device, model.dtype) if pixel_values else None,
        image_grid_thw=grid,
    )


def response_log_probs(model: Any, batch: LMBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of every response token given everything before it, and the entropy of that next-token
    distribution (no gradient), both (B, R) and zero where ``response_mask`` is 0. Differentiable in the
    model's parameters; temperature 1 (the distribution the policy records at generation)."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                pixel_values=batch.pixel_values, image_grid_thw=batch.image_grid_thw, use_cache=False)
    p_len, r_len = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    # Logits at column t predict the token at t + 1.
    logits = out.logits[:, p_len - 1: p_len + r_len - 1].float()
    log_p = torch.log_softmax(logits, -1)
    chosen = log_p.gather(2, batch.response_ids[..., None])[..., 0] * batch.response_mask
    with torch.no_grad():
        entropy = -(log_p.exp() * log_p).sum(-1) * batch.response_mask
    return chosen, entropy
