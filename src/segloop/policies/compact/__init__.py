"""The compact grounding policy (``name="compact"``): a small query-conditioned conv net that writes the
same ``<tool_call>`` text as any policy. ``DEFAULT_CHECKPOINT`` is the trained checkpoint shipped here,
the offline default agent."""

from pathlib import Path

from segloop.policies.compact.network import TOOLS, CompactConfig, CompactNet, build_vocabulary
from segloop.policies.compact.policy import PARTS, CompactPolicy, TurnRecord

DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoint"

__all__ = ["DEFAULT_CHECKPOINT", "PARTS", "TOOLS", "CompactConfig", "CompactNet", "CompactPolicy", "TurnRecord",
           "build_vocabulary"]
