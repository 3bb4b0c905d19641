"""``segloop train grpo``: GRPO on the IoU of the submitted mask, for any learnable policy.

One step (CleanRL style, everything in ``GRPOConfig``):
1. ``prompts_per_step`` training samples, ``group_size`` episodes each, all run concurrently through
   the same ``Agent`` graph and tools (a batching policy answers their turns in shared forward passes).
2. Reward per episode (``rl.rewards``); advantage = reward - group mean, divided by the group's std
   with ``adv_norm="std"`` (GRPO) or not at all with ``"none"`` (Dr. GRPO: a group that differs only by
   IoU jitter or the format term then gets advantages of that size, not full-size ones). A group whose
   rewards spread by no more than ``min_spread`` carries no signal: its advantages are zero and its
   episodes are left out of the loss.
3. ``update_epochs`` passes over the episodes in minibatches: ratio = exp(logp - logp_at_rollout),
   loss = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A), averaged over decision positions
   (tokens or action parts; ``loss_agg="token"``) or first within each episode and then over episodes
   (``"episode"``: a miss that loops to the turn budget does not weigh more than a hit because it took
   more decisions), plus ``kl_coef`` x the k3 estimate of KL to a frozen copy of the start policy, minus
   ``entropy_coef`` x entropy.
Rollouts are reproducible: prompts come from the seeded trainer generator, episode ids name the step,
prompt and group member, and the episode seed (``EpisodeConfig.seed`` = ``seed``) makes a policy that
samples per episode (the compact policy, the transformers policy) choose the same whatever the batching.
Logs per step: reward mean/std, IoU, turns, zoom/inspect rates, KL, clip fraction, entropy, episodes/s,
decisions/s, peak memory; held-out greedy evaluation every ``eval_every`` steps; ``checkpoint/`` (policy
+ optimizer + step) every ``save_every`` steps, resumed with ``--resume``; ``grpo_log.csv`` and
``grpo_curves.png``.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from segloop.data.specs import SPEC_HELP
from segloop.rl.rewards import RewardConfig

if TYPE_CHECKING:
    import torch

    from segloop.policies.learnable import LearnablePolicy


class GRPOConfig(BaseModel):
    """Every hyperparameter of a GRPO run."""

    model_config = ConfigDict(extra="forbid")

    model: Path = Field(description="learnable policy directory to start from")
    data: str = Field(description=f"training samples: {SPEC_HELP}")
    eval_data: str | None = Field(None, description="held-out samples scored every --eval-every steps (a data "
                                                    "spec, as --data)")
    out: Path = Field(description="output directory (logs, curves, checkpoint/, final/)")
    segmenter: str = Field("grabcut", description="segmenter of the rollouts")
    steps: int = Field(100, ge=0, description="GRPO steps (one rollout and update each)")
    prompts_per_step: int = Field(8, ge=1, description="training samples per step")
    group_size: int = Field(8, ge=2, description="episodes per sample (G)")
    lr: float = Field(3e-4, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    update_epochs: int = Field(2, ge=1, description="passes over each step's episodes")
    minibatch_episodes: int = Field(32, ge=1, description="episodes per optimiser step")
    eps_low: float = Field(0.2, gt=0, description="lower clip of the probability ratio (1 - eps_low)")
    eps_high: float = Field(0.28, gt=0, description="upper clip of the probability ratio (1 + eps_high)")
    kl_coef: float = Field(0.0, ge=0, description="weight of the KL to the starting policy (0: no reference)")
    entropy_coef: float = Field(0.0, ge=0, description="weight of the entropy bonus")
    adv_norm: Literal["std", "none"] = Field("std", description="divide advantages by the group's std (GRPO) or "
                                                                "not (Dr. GRPO)")
    min_spread: float = Field(1e-9, ge=0, description="groups whose rewards spread by no more are left out")
    loss_agg: Literal["token", "episode"] = Field("token", description="mean over decisions, or per episode first")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient norm clip")
    max_turns: int = Field(8, ge=1, description="turn budget of an episode")
    reward: RewardConfig = Field(default_factory=RewardConfig)
    eval_every: int = Field(20, ge=1, description="steps between held-out evaluations")
    eval_n: int = Field(50, ge=1, description="held-out samples per evaluation")
    save_every: int = Field(20, ge=1, description="steps between checkpoints (OUT/checkpoint, for --resume)")
    seed: int = Field(0, description="seed of prompt sampling and rollouts")
    threads: int = Field(1, ge=1, description="torch CPU threads")
    lora_rank: int | None = Field(None, ge=1, description="transformers models: train a LoRA adapter of this rank")
    gradient_checkpointing: bool = Field(False, description="transformers models: recompute activations in backward")


def group_advantages(rewards: list[float], group_size: int, normalise: str = "std", min_spread: float = 1e-9
                     ) -> tuple[list[float], list[bool]]:
    """Advantages inside each group of ``group_size`` consecutive rewards (centred; divided by the
    group's std with ``normalise="std"``), and whether each episode enters the loss (False for every
    member of a group whose rewards spread by ``min_spread`` or less)."""
    if len(rewards) % group_size:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {group_size}")
    advantages, keep = [], []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        mean = sum(group) / group_size
        std = (sum((r - mean) ** 2 for r in group) / (group_size - 1)) ** 0.5
        scale = std + 1e-6 if normalise == "std" else 1.0
        informative = max(group) - min(group) > min_spread
        advantages += [(r - mean) / scale if informative else 0.0 for r in group]
        keep += [informative] * group_size
    return advantages, keep


def aggregate(values: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Mean of ``values`` (B, T) over the masked positions: all at once (``token``) or per row, then
    over the rows that have any (``episode``)."""
    from segloop.policies.learnable import masked_mean

    if how == "token":
        return masked_mean(values, mask)
    per_row = (values * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    rows = (mask.sum(1) > 0).float()
    return (per_row * rows).sum() / rows.sum().clamp_min(1.0)


def policy_loss(policy: LearnablePolicy, records: list, advantages: torch.Tensor, config: GRPOConfig,
                reference: LearnablePolicy | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped GRPO loss of a minibatch of episode records and its diagnostics."""
    import torch

    from segloop.policies.learnable import masked_mean

    scored = policy.log_probs(records)
    mask = scored.mask
    adv = advantages.to(scored.log_probs.device)[:, None]
    ratio = torch.exp((scored.log_probs - scored.recorded) * mask)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - config.eps_low, 1 + config.eps_high) * adv
    loss = -aggregate(torch.minimum(unclipped, clipped), mask, config.loss_agg)
    stats = {"clip_frac": float(masked_mean(((ratio - 1).abs() > 1e-6).float()
                                            * (clipped != unclipped).float(), mask))}
    if scored.entropy is not None:
        entropy = masked_mean(scored.entropy, mask)
        loss = loss - config.entropy_coef * entropy
        stats["entropy"] = entropy.item()
    if reference is not None:
        with torch.no_grad():
            ref = reference.log_probs(records).log_probs.to(scored.log_probs.device)
        delta = (ref - scored.log_probs) * mask
        kl = aggregate(torch.exp(delta) - delta - 1, mask, config.loss_agg)
        loss = loss + config.kl_coef * kl
        stats["kl"] = kl.item()
    return loss, stats


def _load(config: GRPOConfig, directory: Path) -> LearnablePolicy:
    from segloop.policies.registry import load_learnable

    options: dict[str, Any] = {"seed": config.seed}
    if config.lora_rank is not None:
        options["lora_rank"] = config.lora_rank
    if config.gradient_checkpointing:
        options["gradient_checkpointing"] = True
    return load_learnable(directory, **options)


def train(config: GRPOConfig, resume: bool = False) -> dict[str, Any]:
    import torch

    from segloop.agent.episode import EpisodeConfig
    from segloop.data.specs import first_items, load_items
    from segloop.evaluation.stats import episode_stats, search_stats
    from segloop.policies.assembly import AgentSpec, build_agent
    from segloop.rl.curves import CurveLog, plot_curves
    from segloop.rl.rewards import episode_reward
    from segloop.rl.rollout import EVAL_COLUMNS, eval_row, evaluate, peak_memory_mb, run_episodes

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    config.out.mkdir(parents=True, exist_ok=True)
    checkpoint = config.out / "checkpoint"
    resuming = resume and (checkpoint / "trainer_state.pt").is_file()
    policy = _load(config, checkpoint if resuming else config.model)
    reference = None
    if config.kl_coef > 0:
        reference = _load(config, config.model)
        reference.train(False)
        for p in reference.parameters():
            p.requires_grad_(False)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    start_step = 0
    if resuming:
        state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        start_step = state["step"]
        rng.setstate(state["rng"])
    else:
        (config.out / "grpo_log.csv").unlink(missing_ok=True)
    (config.out / "grpo_config.json").write_text(config.model_dump_json(indent=1))

    train_items = load_items(config.data)
    eval_items = first_items(config.eval_data, config.eval_n) if config.eval_data else []
    spec = AgentSpec(segmenter=config.segmenter, episode=EpisodeConfig(max_turns=config.max_turns, seed=config.seed))
    agent = build_agent(spec, policy=policy)
    log = CurveLog(config.out / "grpo_log.csv")
    # Training-rollout figures (the same names as agent.stats), then the update's, then the held-out ones.
    rollout_columns = ["iou", "first_zoom_hit", "some_zoom_hit", "zooms", "zoom_out_rate", "turns", "zoom_rate",
                       "segment_rate", "submit_rate", "valid_rate", "no_target_accuracy", "false_no_target"]
    columns = ["step", "reward_mean", "reward_std", *rollout_columns, "kl", "clip_frac", "entropy", "skipped_groups",
               "loss", "episodes_per_s", "decisions_per_s", "cpu_min", "wall_min", "peak_mem_mb", *EVAL_COLUMNS]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    summary: dict[str, Any] = {}

    def evaluate_now(row: dict[str, Any]) -> None:
        policy.train(False)
        result = evaluate(agent, eval_items, prefix=f"grpo-eval-{row['step']}")
        row.update(eval_row(result))
        summary["eval"] = result
        print(f"step {row['step']}: held-out gIoU {result['giou']:.3f} cIoU {result['ciou']:.3f} "
              f"zoom {result['zoom_rate']:.2f} first zoom holds target {result['first_zoom_hit']}", file=sys.stderr)

    if eval_items and start_step == 0:
        row = dict.fromkeys(columns)
        row["step"] = 0
        evaluate_now(row)
        log.write(row)

    for step in range(start_step + 1, config.steps + 1):
        policy.train(False)
        prompts = rng.sample(train_items, min(config.prompts_per_step, len(train_items)))
        jobs = [(item, f"s{step}-p{p}-g{g}") for p, item in enumerate(prompts) for g in range(config.group_size)]
        tic = time.perf_counter()
        results = asyncio.run(run_episodes(agent, jobs, concurrency=len(jobs), greedy=False))
        rollout_s = time.perf_counter() - tic
        breakdowns = [episode_reward(r, item.mask, item.ignore, config.reward) for r, (item, _) in zip(results, jobs,
                                                                                                     strict=True)]
        rewards = [b.reward for b in breakdowns]
        advantages, keep = group_advantages(rewards, config.group_size, config.adv_norm, config.min_spread)
        records = [r.trajectory.ledger for r in results]
        used = [i for i, k in enumerate(keep) if k and records[i]]
        stats: dict[str, list[float]] = {}
        policy.train(True)
        loss_value = None
        for _ in range(config.update_epochs):
            rng.shuffle(used)
            for start in range(0, len(used), config.minibatch_episodes):
                chunk = used[start : start + config.minibatch_episodes]
                adv = torch.tensor([advantages[i] for i in chunk])
                loss, part = policy_loss(policy, [records[i] for i in chunk], adv, config, reference)
                optimizer.zero_grad(set_to_none=True)
                (loss * len(chunk) / max(len(used), 1)).backward()
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                loss_value = loss.item()
                for key, value in part.items():
                    stats.setdefault(key, []).append(value)
        elapsed = time.perf_counter() - tic
        decisions = sum(len(r) for r in records)
        mean = sum(rewards) / len(rewards)
        trajectories = [r.trajectory for r in results]
        found = {**episode_stats(trajectories), **search_stats(trajectories, [item.mask for item, _ in jobs]),
                 "iou": sum(b.iou for b in breakdowns) / len(breakdowns)}
        row = dict.fromkeys(columns)
        row.update(step=step, reward_mean=round(mean, 4),
                   reward_std=round((sum((r - mean) ** 2 for r in rewards) / len(rewards)) ** 0.5, 4),
                   **{k: None if found[k] is None else round(found[k], 4) for k in rollout_columns},
                   skipped_groups=keep.count(False) // config.group_size, loss=loss_value,
                   episodes_per_s=round(len(results) / rollout_s, 2), decisions_per_s=round(decisions / elapsed, 1),
                   cpu_min=round((time.process_time() - cpu0) / 60, 2),
                   wall_min=round((time.perf_counter() - wall0) / 60, 2), peak_mem_mb=round(peak_memory_mb(), 1),
                   **{k: round(sum(v) / len(v), 5) for k, v in stats.items()})
        if eval_items and (step % config.eval_every == 0 or step == config.steps):
            evaluate_now(row)
        log.write(row)
        print(f"step {step}: reward {row['reward_mean']} iou {row['iou']} zoom {row['zoom_rate']} "
              f"{row['episodes_per_s']} ep/s", file=sys.stderr)
        if step % config.save_every == 0 or step == config.steps:
            policy.save_pretrained(checkpoint)
            torch.save({"optimizer": optimizer.state_dict(), "step": step, "rng": rng.getstate()},
                       checkpoint / "trainer_state.pt")
    policy.save_pretrained(config.out / "final")
    plot_curves(log.rows(), ["reward_mean", "iou", "first_zoom_hit", "some_zoom_hit", "zoom_out_rate", "eval_giou",
                             "segment_rate", "entropy", "kl"], config.out / "grpo_curves.png", "GRPO")
    (config.out / "grpo_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary
