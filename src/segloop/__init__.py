"""segloop: a vision-language agent that segments what a sentence asks for by acting.

Layers, lowest first (each imports only those below it; CI checks it): ``segloop.tools`` (views, segmenters,
overlays, masks), ``segloop.agent`` (one episode: actions, prompts, the LangGraph graph, data, batches),
``segloop.policies`` (who acts, and ``build_agent``), ``segloop.rl`` (rewards and trainers), ``segloop.demos``
(the chat demo), ``segloop.cli`` (the command line). docs/design.md describes the whole.
"""
