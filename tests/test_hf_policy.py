"""``TransformersPolicy`` on the tiny model: the token ledger, its log-probs, the real graph, LoRA, errors."""

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.transcripts import CALLS, SIDE, Transcript, image, mask_runs, sampled, scripted

from segloop.agent.actions import Segment, Submit, ZoomIn
from segloop.agent.episode import Agent, EpisodeConfig
from segloop.agent.parser import format_call
from segloop.agent.policy import ChatMessage, PolicyContext, PolicyTurn
from segloop.policies.hf import TokenLedger, TransformersPolicy
from segloop.policies.learnable import masked_mean
from segloop.policies.registry import load_learnable
from segloop.rl.sft import ExpertForcing
from segloop.tools.segmenters import build_segmenter


@pytest.fixture(scope="module")
def tiny(tiny_model: Path) -> Path:
    return tiny_model


def test_ledger_is_exactly_the_template_of_the_transcript(tiny: Path) -> None:
    policy = TransformersPolicy(tiny, max_side=SIDE)
    transcript = Transcript("scripted")
    ledger = asyncio.run(scripted(policy, transcript, CALLS))
    tok = policy.tokenizer
    # Generated runs are exactly the four calls, each ending in the </tool_call> stop token.
    runs = mask_runs(ledger.mask)
    assert [tok.decode(ledger.ids[a:b]) for a, b in runs] == CALLS
    assert all(ledger.ids[b - 1] == tok.convert_tokens_to_ids("</tool_call>") for _, b in runs)
    assert len(ledger) == sum(b - a for a, b in runs) and ledger.turns == 4
    # Extending token by token gives what templating the whole transcript at once gives (the last tool
    # message was never acted on, so it is not in the ledger).
    rendered = policy.processor.apply_chat_template(_as_template(transcript.messages[:-1]), tokenize=False)
    pictures = [Image.fromarray(a) for a in ledger.images]
    whole = policy.processor(text=[rendered], images=pictures, add_special_tokens=False)["input_ids"][0]
    assert ledger.ids + tok("<|im_end|>\n", add_special_tokens=False)["input_ids"] == list(whole)
    assert len(ledger.images) == 4 and len(ledger.pixel_values) == 4
    # Observation tokens (image pads included) are never marked as the policy's.
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert all(m == 0 for i, m in zip(ledger.ids, ledger.mask, strict=True) if i == image_pad)
    assert ledger.mask[: ledger.prompt_length] == [0] * ledger.prompt_length


def _as_template(messages: list[ChatMessage]) -> list[dict]:
    out = []
    for m in messages:
        if m.image_id is None:
            out.append({"role": m.role, "content": m.content})
        else:
            out.append({"role": m.role, "content": [{"type": "image"}, {"type": "text", "text": m.content}]})
    return out


def _check_turn_ends(policy: TransformersPolicy, ledger: TokenLedger) -> set[str]:
    """After each generated turn comes exactly one end-of-turn token: the model's own, or the template's."""
    eos = policy.tokenizer.eos_token_id
    kinds = set()
    for a, b in mask_runs(ledger.mask)[:-1]:
        if ledger.ids[b - 1] == eos:
            kinds.add("model")
            assert ledger.ids[b] != eos
        else:
            kinds.add("template")
            assert ledger.ids[b] == eos and ledger.mask[b] == 0
        assert a < b
    return kinds


def test_sampled_log_probs_equal_a_forward_pass(tiny: Path) -> None:
    policy = TransformersPolicy(tiny, max_side=SIDE, temperature=1.5, top_p=0.9, max_new_tokens=20)
    ledgers = [asyncio.run(sampled(policy, Transcript(f"s{i}", seed=i), 5))[0] for i in (0, 1, 3)]
    # Seeds chosen so that both kinds of turn end occur: the model's <|im_end|> and the length limit.
    assert set().union(*(_check_turn_ends(policy, ledger) for ledger in ledgers)) == {"model", "template"}
    scored = policy.log_probs(ledgers)
    assert scored.log_probs.shape == scored.mask.shape == scored.recorded.shape
    assert scored.mask.sum().item() == sum(len(ledger) for ledger in ledgers)
    diff = ((scored.log_probs - scored.recorded) * scored.mask).abs().max().item()
    assert diff < 1e-4
    assert scored.recorded[scored.mask.bool()].lt(0).all()  # real log-probs were recorded, not zeros


def test_greedy_and_seeded_sampling_are_reproducible(tiny: Path) -> None:
    greedy = TransformersPolicy(tiny, max_side=SIDE, greedy=True, max_new_tokens=12)
    a = asyncio.run(sampled(greedy, Transcript("g1"), 2))[1]
    b = asyncio.run(sampled(greedy, Transcript("g2"), 2))[1]
    assert a == b
    sampler = TransformersPolicy(tiny, max_side=SIDE, max_new_tokens=12)
    c = asyncio.run(sampled(sampler, Transcript("r1", seed=5), 2))[1]
    d = asyncio.run(sampled(sampler, Transcript("r2", seed=5), 2))[1]
    e = asyncio.run(sampled(sampler, Transcript("r3", seed=6), 2))[1]
    assert c == d and c != e

    async def mixed() -> list:  # greedy asked per episode, in one batch with a sampled episode
        return await asyncio.gather(sampled(sampler, Transcript("m1", greedy=True), 2),
                                    sampled(sampler, Transcript("m2", seed=5), 2))

    (_, f), (_, g) = asyncio.run(mixed())
    assert f == a and g == c and sampler.greedy is False
    assert 2 in sampler.batcher.batch_sizes  # the two rows shared a forward pass


def test_concurrent_episodes_share_the_model_and_leave_the_loop_free(tiny: Path) -> None:
    policy = TransformersPolicy(tiny, max_side=SIDE, max_new_tokens=24)

    async def main() -> tuple[list, int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        tick_task = asyncio.create_task(ticker())
        results = await asyncio.gather(*(sampled(policy, Transcript(f"c{i}", seed=i), 3) for i in range(3)))
        done.set()
        await tick_task
        return results, ticks

    results, ticks = asyncio.run(main())
    assert ticks > 5  # generate ran off the event loop
    ledgers = [ledger for ledger, _ in results]
    assert len({tuple(ledger.ids) for ledger in ledgers}) == 3
    scored = policy.log_probs(ledgers)
    assert ((scored.log_probs - scored.recorded) * scored.mask).abs().max().item() < 1e-4


class _Expert:
    """Writes the scripted calls in order, whatever it is shown."""

    name = "scripted-expert"
    frame = "pixels"
    max_side = SIDE

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.turns: dict[str, int] = {}

    async def act(self, context: PolicyContext) -> PolicyTurn:
        turn = self.turns.get(context.episode_id, 0)
        self.turns[context.episode_id] = turn + 1
        return PolicyTurn(text=self.texts[min(turn, len(self.texts) - 1)])

    def end_episode(self, episode_id: str) -> None:
        self.turns.pop(episode_id, None)


def test_graph_episodes_record_their_ledgers(tiny: Path) -> None:
    student = TransformersPolicy(tiny, max_side=SIDE, max_new_tokens=16)
    tok = student.tokenizer
    texts = [format_call(ZoomIn(bbox_2d=[0, 0, 80, 60])), format_call(Segment(bbox_2d=[5, 5, 60, 50])),
             format_call(Submit())]
    forced = Agent(ExpertForcing(_Expert(texts), student), build_segmenter("grabcut"), EpisodeConfig(max_turns=5))
    result = asyncio.run(forced.run(image(9, 150, 200), "the red circle", episode_id="forced"))
    assert [t.action["name"] for t in result.trajectory.turns] == ["zoom_in", "segment", "submit"]
    ledger = result.trajectory.ledger
    runs = mask_runs(ledger.mask)
    assert [tok.decode(ledger.ids[a:b]) for a, b in runs] == texts
    for _, b in runs[:-1]:  # the template's end of turn follows each call, as an observation token
        assert ledger.ids[b] == tok.eos_token_id and ledger.mask[b] == 0
    assert len(ledger.images) == 3 and ledger.ids[-1] == tok.convert_tokens_to_ids("</tool_call>")

    # The untrained model sampling through the graph: nonsense turns, error observations, a full ledger.
    sampling = Agent(student, build_segmenter("grabcut"), EpisodeConfig(max_turns=3))
    result = asyncio.run(sampling.run(image(10, 120, 90), "the dog", episode_id="sampled"))
    ledger = result.trajectory.ledger
    assert ledger.turns == 3 and len(mask_runs(ledger.mask)) >= 1
    scored = student.log_probs([ledger])
    assert ((scored.log_probs - scored.recorded) * scored.mask).abs().max().item() < 1e-4


def test_generation_stops_at_the_closing_tool_call(tiny: Path) -> None:
    """Taught (through the learnable protocol) to write one call, the model stops right after it."""
    policy = TransformersPolicy(tiny, max_side=SIDE, greedy=True, max_new_tokens=40)
    target = format_call(Segment(bbox_2d=[10, 12, 60, 70]))
    records = [asyncio.run(scripted(policy, Transcript(f"m{i}", seed=i), [target] * 2)) for i in range(4)]
    optimizer = torch.optim.AdamW(policy.parameters(), lr=5e-3)
    policy.train(True)
    for _ in range(150):
        scored = policy.log_probs(records)
        loss = -masked_mean(scored.log_probs, scored.mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.005:
            break
    policy.train(False)
    transcript = Transcript("after", seed=42)
    out = asyncio.run(policy.act(transcript.context(0)))
    ledger = policy.end_episode("after")
    assert out.text == target
    assert ledger.ids[-1] == policy.tokenizer.convert_tokens_to_ids("</tool_call>")
    assert len(ledger) == len(policy.tokenizer(target, add_special_tokens=False)["input_ids"])


def test_lora_trains_the_adapter_only_and_saves_a_plain_checkpoint(tiny: Path, tmp_path: Path) -> None:
    policy = TransformersPolicy.from_pretrained(tiny, max_side=SIDE, lora_rank=2)
    params = policy.parameters()
    names = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert params and all("lora_" in n and "language_model" in n for n in names)
    ledger = asyncio.run(scripted(policy, Transcript("lora"), CALLS[:2]))
    before = policy.log_probs([ledger]).log_probs.detach()
    scored = policy.log_probs([ledger])
    (-masked_mean(scored.log_probs, scored.mask)).backward()
    torch.optim.SGD(params, lr=0.5).step()
    after = policy.log_probs([ledger]).log_probs.detach()
    assert not torch.allclose(before, after)
    policy.save_pretrained(tmp_path / "merged")
    reloaded = load_learnable(tmp_path / "merged", max_side=SIDE)
    assert isinstance(reloaded, TransformersPolicy) and not reloaded.lora
    again = reloaded.log_probs([ledger]).log_probs.detach()
    assert torch.allclose(after, again, atol=1e-4)


def test_a_rewritten_history_is_refused(tiny: Path) -> None:
    policy = TransformersPolicy(tiny, max_side=SIDE, max_new_tokens=8)
    transcript = Transcript("edit")
    asyncio.run(policy.act(transcript.context(0)))
    transcript.answer("<tool_call>something else</tool_call>", 0)
    with pytest.raises(ValueError, match="edited history"):
        asyncio.run(policy.act(transcript.context(1)))


def test_bad_options_and_missing_checkpoint_are_clear(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="temperature"):
        TransformersPolicy(tiny, temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        TransformersPolicy(tiny, top_p=1.5)
    with pytest.raises(ValueError, match="cannot load"):
        TransformersPolicy(tmp_path / "nothing-here")
    # Views are never larger than the processor takes unresized (the tiny one: 224 x 224).
    assert TransformersPolicy(tiny).max_side == 224
    with pytest.raises(ValueError, match="at most 224 px"):
        TransformersPolicy(tiny, max_side=448)


Sampled = tuple[TokenLedger, list[str]]


def _together(policy: TransformersPolicy, transcripts: list[Transcript], turns: int) -> list[Sampled]:
    async def main() -> list[Sampled]:
        return await asyncio.gather(*(sampled(policy, t, turns) for t in transcripts))

    return asyncio.run(main())


def test_concurrent_turns_generate_as_one_batch_with_the_ledgers_they_would_have_alone(tiny: Path) -> None:
    options = {"max_side": SIDE, "temperature": 1.3, "top_p": 0.95, "max_new_tokens": 14}
    batched = TransformersPolicy(tiny, **options)
    together = _together(batched, [Transcript(f"b{i}", seed=30 + i) for i in range(4)], 3)
    # The episodes' turns met in the queue: four rows per generate (the first batch may start smaller).
    assert max(batched.batcher.batch_sizes) == 4 and sum(batched.batcher.batch_sizes.values()) < 12
    alone = TransformersPolicy(tiny, max_batch=1, **options)
    for i, (ledger, texts) in enumerate(together):
        single, single_texts = asyncio.run(sampled(alone, Transcript(f"a{i}", seed=30 + i), 3))
        assert texts == single_texts and ledger.ids == single.ids and ledger.mask == single.mask
        assert np.allclose(ledger.logprobs, single.logprobs, atol=1e-4)
    assert set(alone.batcher.batch_sizes) == {1}
    # Rows of different lengths and image shapes were left-padded together: the recorded log-probs are
    # still those a forward pass over each ledger gives.
    ledgers = [ledger for ledger, _ in together]
    assert len({len(ledger.ids) for ledger in ledgers}) > 1
    scored = batched.log_probs(ledgers)
    assert ((scored.log_probs - scored.recorded) * scored.mask).abs().max().item() < 1e-4


def _perturbed(policy: TransformersPolicy) -> TransformersPolicy:
    """The same seeded noise on every weight: the freshly built tiny model writes "\\n" whatever it is shown,
    which would hide a row reading another row's image or positions; noisy weights make the text depend on
    the input."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in policy.model.parameters():
            weight.add_(0.3 * torch.randn(weight.shape, generator=generator))
    return policy


def test_a_greedy_batch_writes_what_single_runs_write(tiny: Path) -> None:
    batched = _perturbed(TransformersPolicy(tiny, max_side=SIDE, greedy=True, max_new_tokens=12))
    together = _together(batched, [Transcript(f"gb{i}", seed=40 + i) for i in range(5)], 2)
    assert max(batched.batcher.batch_sizes) == 5
    single = _perturbed(TransformersPolicy(tiny, max_side=SIDE, greedy=True, max_new_tokens=12, max_batch=1))
    alone = [asyncio.run(sampled(single, Transcript(f"gs{i}", seed=40 + i), 2)) for i in range(5)]
    assert len({tuple(texts) for _, texts in alone}) == 5  # every episode writes something of its own
    assert [texts for _, texts in together] == [texts for _, texts in alone]
    assert [ledger.ids for ledger, _ in together] == [ledger.ids for ledger, _ in alone]
