"""``transformers serve`` (the OpenAI-compatible server that ships with transformers) for checkpoints whose processor
is one of segloop's image-only classes, such as the tiny model of ``segloop make-tiny``.

A user without torchvision does what this does: register the classes with ``AutoProcessor``, then start the
stock server in the same process. Every argument goes to ``transformers serve``::

    python scripts/transformers_serve.py /path/to/tiny --port 8000 --device cpu
    segloop run IMG "the cat" --policy openai --model /path/to/tiny --base-url http://localhost:8000/v1 --max-side 224

Needs ``pip install "transformers[serving]"`` (the ``serving`` extra of segloop; ``scripts/setup.sh --dev``
installs it).
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_UPDATE_CHECK", "1")  # no call to PyPI at start-up
    from transformers.cli.transformers import main as transformers_main

    from segloop.policies.processors import register_image_only_processors

    register_image_only_processors()
    sys.argv = ["transformers", "serve", *sys.argv[1:]]
    transformers_main()


if __name__ == "__main__":
    main()
