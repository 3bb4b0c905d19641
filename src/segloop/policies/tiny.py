"""The tiny model: a Qwen2.5-VL-architecture checkpoint small enough to train on a CPU, built offline.

It exists so the language-model path (chat template, token ledger, log-probs, GRPO) runs end to end
where no pretrained weights can be downloaded. ``make_tiny(out_dir)`` writes a directory that loads
through exactly the code a hub checkpoint loads through: ``AutoModelForImageTextToText.from_pretrained``
plus ``segloop.policies.processors.load_processor``.

Sizes follow the CPU measurements (docs/notes/tiny-vlm-learnability.md): text hidden 128 in 2 layers, vision depth
2 at hidden 64, about 0.6M parameters. The byte-level BPE tokenizer is trained on the project's own
prompt and tool-call text with every digit its own token (coordinates are written digit by digit).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from segloop.policies.processors import image_only_processor_class

# Qwen's special tokens, in Qwen's order. The first block are control tokens (special: never produced by
# ordinary text); the tag tokens are added but not special, as in Qwen's tokenizer, so they decode as text.
CONTROL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")
TAG_TOKENS = ("<tool_call>", "</tool_call>", "<think>", "</think>", "<tool_response>", "</tool_response>")

# Qwen2.5-VL's chat template, with Qwen's tool-message rendering (a tool observation is a user turn
# wrapped in <tool_response>) and no video branch; tools and structured calls are written the way Qwen3's
# templates write them (``tools=`` as a <tools> block at the end of the system turn, an assistant's
# ``tool_calls`` as <tool_call>{"name": ..., "arguments": ...}</tool_call>, here without newlines, in the form
# the project's calls take). Written with explicit "\n" so whitespace is exact.
CHAT_TEMPLATE = (
    "{%- macro text(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages[0]['role'] == 'system' -%}{{- text(messages[0]['content']) + '\\n\\n' -}}{%- endif -%}"
    "{{- '# Tools\\n\\nYou may call one of these functions:\\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\\n' + tool | tojson -}}{%- endfor -%}"
    "{{- '\\n</tools><|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if not (tools and loop.first and message['role'] == 'system') -%}"
    "{%- if loop.first and message['role'] != 'system' and not tools -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'tool' -%}{{- '<|im_start|>user\\n<tool_response>\\n' -}}"
    "{%- else -%}{{- '<|im_start|>' + message['role'] + '\\n' -}}{%- endif -%}"
    "{%- if message['content'] -%}{{- text(message['content']) -}}{%- endif -%}"
    "{%- for call in message['tool_calls'] or [] -%}"
    "{%- if call['function'] is defined -%}{%- set call = call['function'] -%}{%- endif -%}"
    "{{- '<tool_call>{\"name\": \"' + call['name'] + '\", \"arguments\": ' -}}"
    "{%- if call['arguments'] is string -%}{{- call['arguments'] -}}"
    "{%- else -%}{{- call['arguments'] | tojson -}}{%- endif -%}"
    "{{- '}</tool_call>' -}}"
    "{%- endfor -%}"
    "{%- if message['role'] == 'tool' -%}{{- '\\n</tool_response>' -}}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Views up to 224 x 224 pass the image processor unresized: 64 image tokens, the size measured to train on a
# CPU. ``TransformersPolicy`` derives its default ``max_side`` from this limit.
_MIN_PIXELS = 28 * 28
_MAX_PIXELS = 224 * 224


def _corpus(seed: int) -> list[str]:
    """Text like what the model reads and writes: the agent's prompts and observations, tool calls with
    random coordinates, referring expressions, chat-template scaffolding."""
    from segloop.agent import prompts
    from segloop.agent.actions import InspectMask, Segment, Submit, ZoomIn, ZoomOut
    from segloop.agent.parser import format_call
    from segloop.tools.views import full_view

    rng = random.Random(seed)
    lines = [prompts.system_prompt(frame, 8) for frame in ("pixels", "norm1000")]
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
    shapes = ["circle", "square", "triangle", "star", "object", "person", "car", "dog"]
    places = ["left of", "right of", "above", "below", "next to", "largest", "smallest", "leftmost"]
    for _ in range(300):
        width, height = rng.randint(64, 2000), rng.randint(64, 2000)
        view = full_view(width, height, 1024)
        query = f"the {rng.choice(colours)} {rng.choice(shapes)} {rng.choice(places)} the {rng.choice(shapes)}"
        x1, x2 = sorted(rng.sample(range(view.width + 1), 2))
        y1, y2 = sorted(rng.sample(range(view.height + 1), 2))
        action = rng.choice([
            ZoomIn(bbox_2d=[x1, y1, x2, y2]),
            Segment(bbox_2d=[x1, y1, x2, y2]),
            Segment(bbox_2d=[x1, y1, x2, y2], points_2d=[[(x1 + x2) // 2, (y1 + y2) // 2]], point_labels=[1]),
            ZoomOut(), InspectMask(), Submit(), Submit(no_target=True),
        ])
        lines.append(prompts.first_user_text(query, view))
        lines.append(f"<think>I look for {query}.</think>{format_call(action)}")
        result = f"Segmented: the mask covers {rng.randint(0, 100)}% of the view."
        lines.append("<|im_start|>user\n<tool_response>\n<|vision_start|><|image_pad|><|vision_end|>"
                     f"{prompts.observation_text(result, view, rng.randint(0, 8))}\n</tool_response><|im_end|>\n"
                     "<|im_start|>assistant\n")
    return lines


def build_tokenizer(seed: int = 0, vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer trained on ``_corpus``; digits are single tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(CONTROL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(_corpus(seed), trainer=trainer)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=list(CONTROL_TOKENS[1:]), padding_side="left",
        model_max_length=32768,
    )
    return fast


def make_tiny(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny model, tokenizer, processor and chat template to ``out_dir``; deterministic in ``seed``."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(seed)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in CONTROL_TOKENS + TAG_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 8192,
            # mrope_section must sum to head_dim / 2 = 16.
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
            "tie_word_embeddings": True,
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
                       "out_hidden_size": 128, "patch_size": 14, "spatial_merge_size": 2,
                       "fullatt_block_indexes": [1], "window_size": 112},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"], do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
    )
    model.save_pretrained(out)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=_MIN_PIXELS, max_pixels=_MAX_PIXELS)
    processor = image_only_processor_class("qwen2_5_vl")(image_processor, tokenizer, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    return out
