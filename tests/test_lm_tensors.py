"""Ledgers to tensors: layout, masks, images, rope positions, and log-probs by one forward pass."""

import asyncio
import copy
from pathlib import Path

import pytest
import torch
from support.transcripts import CALLS, SIDE, Transcript, mask_runs, sampled, scripted

from segloop.policies.hf import TransformersPolicy
from segloop.policies.lm_tensors import ledger_batch, ledger_parts, response_log_probs


@pytest.fixture(scope="module")
def policy(tiny_model) -> TransformersPolicy:
    return TransformersPolicy(tiny_model, max_side=SIDE, temperature=1.2, max_new_tokens=16)


def test_scripted_four_turn_episode_masks_exactly_the_policy_tokens(policy: TransformersPolicy) -> None:
    ledger = asyncio.run(scripted(policy, Transcript("four"), CALLS))
    batch = ledger_batch([ledger], policy.model, pad_id=policy.tokenizer.pad_token_id)
    parts = ledger_parts(ledger)
    assert batch.prompt_ids[0].tolist() == parts["prompt_ids"] == ledger.ids[: ledger.prompt_length]
    assert batch.response_ids[0].tolist() == parts["response_ids"]
    mask = batch.response_mask[0].tolist()
    texts = [policy.tokenizer.decode(parts["response_ids"][a:b]) for a, b in mask_runs([int(m) for m in mask])]
    assert texts == CALLS  # 1 exactly on the four calls; observations, image tokens, template: 0
    image_pad = policy.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert not any(m for i, m in zip(parts["response_ids"], mask, strict=True) if i == image_pad)
    # Every image's patches, in order; the grid says how many image tokens each one takes.
    assert batch.image_grid_thw.shape == (4, 3)
    assert batch.pixel_values.shape[0] == int(batch.image_grid_thw.prod(-1).sum())
    assert int((batch.input_ids == image_pad).sum()) == int(batch.image_grid_thw.prod(-1).sum()) // 4
    # Multimodal rope: the image tokens of the 4x4-merged 112 px first view share temporal position and
    # span 4 rows x 4 columns; text after an image continues from the image's largest position + 1.
    first = (batch.input_ids[0] == image_pad).nonzero()[:, 0][: int(batch.image_grid_thw[0].prod()) // 4]
    assert len(first) == 16 and int(first[-1] - first[0]) == 15
    t, h, w = batch.position_ids[:, 0, first]
    assert len(set(t.tolist())) == 1 and len(set(h.tolist())) == 4 and len(set(w.tolist())) == 4
    after = int(first[-1]) + 1
    assert int(batch.position_ids[0, 0, after]) == int(batch.position_ids[:, 0, first].max()) + 1


def test_recomputed_log_probs_equal_those_recorded_while_sampling(policy: TransformersPolicy) -> None:
    ledgers = [asyncio.run(sampled(policy, Transcript(f"r{i}", seed=20 + i), 4))[0] for i in range(3)]
    vision = policy.tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|vision_start|>", "<|vision_end|>"])
    # Random weights do rank vision placeholders high (seen with these seeds); the policy never writes them.
    assert not any(i in vision for ledger in ledgers for i, m in zip(ledger.ids, ledger.mask, strict=True) if m)
    batch = ledger_batch(ledgers, policy.model, pad_id=policy.tokenizer.pad_token_id)
    # Left-padded prompts, right-padded responses: every row's real tokens are contiguous.
    for row, ledger in enumerate(ledgers):
        real = batch.attention_mask[row].nonzero()[:, 0]
        assert len(real) == len(ledger.ids) and int(real[-1] - real[0]) + 1 == len(ledger.ids)
        assert batch.input_ids[row, real].tolist() == ledger.ids
    with torch.no_grad():
        log_probs, entropy = response_log_probs(policy.model, batch)
    assert (log_probs - batch.recorded_log_probs).abs().max().item() < 1e-4
    assert batch.response_mask.sum().item() == sum(len(ledger) for ledger in ledgers)
    assert (entropy[batch.response_mask.bool()] > 0).all()
    # Batched = one at a time (padding changes nothing).
    alone = ledger_batch(ledgers[1:2], policy.model, pad_id=policy.tokenizer.pad_token_id)
    with torch.no_grad():
        single, _ = response_log_probs(policy.model, alone)
    n = single.shape[1]
    assert torch.allclose(single[0], log_probs[1, :n], atol=1e-4)


def test_log_probs_are_differentiable(policy: TransformersPolicy) -> None:
    ledger = asyncio.run(scripted(policy, Transcript("grad"), CALLS[:2]))
    batch = ledger_batch([ledger], policy.model, pad_id=policy.tokenizer.pad_token_id)
    log_probs, _ = response_log_probs(policy.model, batch)
    log_probs.sum().backward()
    grads = [p.grad for p in policy.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    policy.model.zero_grad()


def test_inconsistent_ledgers_are_refused(policy: TransformersPolicy, tmp_path: Path) -> None:
    ledger = asyncio.run(scripted(policy, Transcript("bad"), CALLS[:2]))
    pad = policy.tokenizer.pad_token_id
    short = copy.deepcopy(ledger)
    short.mask.pop()
    with pytest.raises(ValueError, match="differ in length"):
        ledger_batch([short], policy.model, pad_id=pad)
    lost_image = copy.deepcopy(ledger)
    lost_image.pixel_values.pop()
    lost_image.image_grid_thw.pop()
    with pytest.raises(ValueError, match="image tokens"):
        ledger_batch([lost_image], policy.model, pad_id=pad)
    marked = copy.deepcopy(ledger)
    marked.mask[0] = 1
    with pytest.raises(ValueError, match="prompt tokens"):
        ledger_batch([marked], policy.model, pad_id=pad)
    with pytest.raises(ValueError, match="no ledgers"):
        ledger_batch([], policy.model, pad_id=pad)
