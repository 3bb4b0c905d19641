"""Scale-out with verl: our episode (the same ``Agent`` graph, tools, reward and data) as a verl agent loop.

- ``rl.verl.episode``: one episode with verl's server as the generator, returning ``AgentLoopOutput``'s
  fields; imports nothing of verl, so it runs (and is tested) in this environment too.
- ``segloop.rl.verl.loop``: ``SegloopAgentLoop``, the ``AgentLoopBase`` subclass registered as ``segloop_agent``
  (imports verl: only in verl's own environment).
- ``rl.verl.reward``: the fallback ``compute_score`` for verl's reward manager.
- ``rl.verl.export``: ``segloop export-verl``, our manifests as verl's ``RLHFDataset`` parquet.

docs/verl.md has the launch steps; configs/verl/ the Hydra config.
"""
