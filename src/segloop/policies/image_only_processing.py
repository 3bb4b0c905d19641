"""Image-only processors of the Qwen-VL families: the stock processor without its video processor, which needs
torchvision (there is no working build of it for the CPU torch this project pins).

This file imports nothing but transformers because it also travels inside the checkpoints it saves, as their
processor code. ``save_pretrained`` writes the stock layout, so the checkpoint loads *with images* in code that
knows nothing of segloop:

- ``processor_config.json`` names the stock class (``Qwen2_5_VLProcessor``) and holds a video processor config,
  so stock ``AutoProcessor`` (``transformers serve``, a notebook) builds the stock processor where torchvision is
  installed. (A class name only segloop defines made stock ``AutoProcessor`` fall back to the bare tokenizer:
  a text-only model that drops every picture, silently.)
- where torchvision is missing, the stock processor cannot be built and says so (it never falls back to text);
  with ``trust_remote_code`` (``transformers serve --trust-remote-code``) the checkpoint's ``auto_map`` points
  ``AutoProcessor`` at this file, copied into it, and the image-only class is built instead.
"""

import json
import shutil
from pathlib import Path

from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor, Qwen3VLProcessor

# The video processor each stock processor builds, for the config a stock load reads.
_VIDEO_PROCESSOR = {"Qwen2VLProcessor": "Qwen2VLVideoProcessor", "Qwen2_5_VLProcessor": "Qwen2VLVideoProcessor",
                    "Qwen3VLProcessor": "Qwen3VLVideoProcessor"}
MODULE = Path(__file__).stem


class _ImageOnly:
    """The stock processor ``stock`` without a video processor; saves the stock layout (see the module)."""

    stock: type

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.video_processor = None  # read by the stock __init__ before it would build one
        self.stock.__init__(self, image_processor, tokenizer, None, chat_template=chat_template)

    def save_pretrained(self, save_directory, **kwargs):
        files = super().save_pretrained(save_directory, **kwargs)
        folder = Path(save_directory)
        stock = self.stock.__name__
        config_path = folder / "processor_config.json"
        config = json.loads(config_path.read_text())
        video = {k: v for k, v in config["image_processor"].items() if k != "image_processor_type"}
        config.update(processor_class=stock, video_processor={**video, "video_processor_type": _VIDEO_PROCESSOR[stock]},
                      auto_map={"AutoProcessor": f"{MODULE}.{type(self).__name__}"})
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tokenizer_path = folder / "tokenizer_config.json"
        if tokenizer_path.is_file():
            tokenizer = json.loads(tokenizer_path.read_text())
            tokenizer["processor_class"] = stock
            tokenizer_path.write_text(json.dumps(tokenizer, indent=2, ensure_ascii=False) + "\n")
        if Path(__file__).resolve() != (folder / f"{MODULE}.py").resolve():
            shutil.copyfile(__file__, folder / f"{MODULE}.py")
        return files


class ImageOnlyQwen2VLProcessor(_ImageOnly, Qwen2VLProcessor):
    stock = Qwen2VLProcessor


class ImageOnlyQwen2_5_VLProcessor(_ImageOnly, Qwen2_5_VLProcessor):
    stock = Qwen2_5_VLProcessor


class ImageOnlyQwen3VLProcessor(_ImageOnly, Qwen3VLProcessor):
    stock = Qwen3VLProcessor


# model_type -> its image-only processor.
IMAGE_ONLY = {"qwen2_vl": ImageOnlyQwen2VLProcessor, "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor,
              "qwen3_vl": ImageOnlyQwen3VLProcessor, "qwen3_vl_moe": ImageOnlyQwen3VLProcessor}
