"""The compact grounding policy (``name="compact"``): dense perception, the request read into slots,
explicit referent scores and small learnt decisions, writing the same ``<tool_call>`` text as any policy.
``DEFAULT_CHECKPOINT`` is the trained checkpoint shipped here, the offline default agent."""

from pathlib import Path

from segloop.policies.compact.policy import CompactConfig, CompactPolicy, Decision

DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoint"

__all__ = ["DEFAULT_CHECKPOINT", "CompactConfig", "CompactPolicy", "Decision"]
