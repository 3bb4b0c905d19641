"""The tiny Qwen2.5-VL builder: loads like a hub checkpoint, deterministic, Qwen's tokens and template."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoModelForImageTextToText

from segloop import cli
from segloop.policies.processors import image_only_processor_class, load_processor
from segloop.policies.tiny import CONTROL_TOKENS, TAG_TOKENS, make_tiny


@pytest.fixture(scope="module")
def tiny(tiny_model: Path) -> Path:
    return tiny_model


def test_loads_through_the_hub_code_path(tiny: Path) -> None:
    model = AutoModelForImageTextToText.from_pretrained(tiny)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    n_params = sum(p.numel() for p in model.parameters())
    assert 300_000 < n_params < 1_500_000
    text = model.config.text_config
    assert (text.hidden_size, text.num_hidden_layers) == (128, 2)
    assert (model.config.vision_config.depth, model.config.vision_config.hidden_size) == (2, 64)
    processor = load_processor(str(tiny))
    assert isinstance(processor, image_only_processor_class())  # no torchvision here: the fallback
    assert processor.video_processor is None
    # The config's special ids are the tokenizer's.
    tok = processor.tokenizer
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")


def test_processor_fallback_follows_the_model_family(tiny: Path, tmp_path: Path) -> None:
    """A Qwen3-VL checkpoint directory gets the Qwen3-VL processor, image-only (no torchvision here)."""
    from transformers import Qwen3VLConfig, Qwen3VLProcessor

    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        (tmp_path / name).write_bytes((tiny / name).read_bytes())
    Qwen3VLConfig().save_pretrained(tmp_path)
    processor = load_processor(str(tmp_path))
    assert isinstance(processor, Qwen3VLProcessor) and processor.video_processor is None
    assert processor.vision_start_token_id == processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    with pytest.raises(ValueError, match="image-only processor"):
        image_only_processor_class("llava")


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path) -> None:
    a, b, c = (make_tiny(tmp_path / name, seed=seed) for name, seed in (("a", 1), ("b", 1), ("c", 2)))
    for name in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_tokenizer_digits_and_special_tokens(tiny: Path) -> None:
    tok = load_processor(str(tiny)).tokenizer
    call = '<tool_call>{"name": "segment", "arguments": {"bbox_2d": [120, 7, 305, 99]}}</tool_call>'
    pieces = tok.tokenize(call)
    assert pieces[0] == "<tool_call>" and pieces[-1] == "</tool_call>"
    digits = [p for p in pieces if any(ch.isdigit() for ch in p)]
    assert digits and all(len(p) == 1 for p in digits)  # every digit its own token
    for token in CONTROL_TOKENS + TAG_TOKENS:
        assert tok.convert_tokens_to_ids(token) != tok.unk_token_id
        assert len(tok(token, add_special_tokens=False)["input_ids"]) == 1
    ids = tok(call + "<|im_end|>", add_special_tokens=False)["input_ids"]
    # Control tokens are skipped when decoding, the tool-call tags are kept (as in Qwen's tokenizer).
    assert tok.decode(ids, skip_special_tokens=True) == call
    assert tok.eos_token == "<|im_end|>"


def test_chat_template_renders_tools_and_images_like_qwen(tiny: Path) -> None:
    processor = load_processor(str(tiny))
    messages = [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "find it"}]},
        {"role": "assistant", "content": "<tool_call>{}</tool_call>"},
        {"role": "tool", "content": [{"type": "image"}, {"type": "text", "text": "Segmented."}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nSYS<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>find it<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>{}</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n<|vision_start|><|image_pad|><|vision_end|>Segmented.\n"
        "</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    no_system = processor.apply_chat_template(messages[1:2], tokenize=False)
    assert no_system.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    images = [Image.fromarray(np.zeros((224, 224, 3), np.uint8)), Image.fromarray(np.zeros((112, 56, 3), np.uint8))]
    out = processor(text=[text], images=images, return_tensors="pt")
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert out["image_grid_thw"].tolist() == [[1, 16, 16], [1, 8, 4]]  # 14-px patches, unresized
    assert int((out["input_ids"] == pad).sum()) == 16 * 16 // 4 + 8 * 4 // 4


def test_cli_make_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["make-tiny", "--out", str(tmp_path / "m"), "--seed", "3"]) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert "wrote" in capsys.readouterr().out
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["make-tiny", "--out", str(blocker)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("segloop make-tiny:") and "\n" not in err
