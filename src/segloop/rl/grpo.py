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
import random
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
    final: Literal["last", "best"] = Field("last", description="final/ is the last step's policy, or the one with the "
                                                               "best held-out gIoU on --eval-data (kept in OUT/best; "
                                                               "--eval-data then takes part in training: report on "
                                                               "other data)")
    seed: int = Field(0, description="seed of prompt sampling and rollouts")
    threads: int = Field(1, ge=1, description="torch CPU threads")
    lora_rank: int | None = Field(None, ge=1, description="transformers models: train a LoRA adapter of this rank")
    gradient_checkpointing: bool = Field(False, description="transformers models: recompute activations in backward")
    resume: bool = Field(False, description="continue from OUT/checkpoint (its step, optimizer and generator)")


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


def train(config: GRPOConfig) -> dict[str, Any]:
    """GRPO from ``config.model`` (or, with ``config.resume``, from ``OUT/checkpoint``) for ``config.steps`` steps,
    on the shared scaffold (``rl.scaffold``). Returns the summary (``eval``: the last held-out figures)."""
    import torch

    from segloop.agent.episode import EpisodeConfig
    from segloop.data.specs import first_items, load_items
    from segloop.evaluation.stats import episode_stats, search_stats
    from segloop.policies.assembly import AgentSpec, build_agent
    from segloop.rl.rewards import episode_reward
    from segloop.rl.rollout import EVAL_COLUMNS, eval_row, evaluate, run_episodes
    from segloop.rl.scaffold import TrainingRun

    checkpoint = config.out / "checkpoint"
    resumed = None
    if config.resume and (checkpoint / "trainer_state.pt").is_file():
        resumed = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    start_step = resumed["step"] if resumed else 0
    run = TrainingRun("grpo", config, config.out, steps=config.steps, seed=config.seed, threads=config.threads,
                      first_step=start_step, resume=resumed is not None)
    rng = random.Random(config.seed)
    policy = _load(config, checkpoint if resumed else config.model)
    reference = None
    if config.kl_coef > 0:
        reference = _load(config, config.model)
        reference.train(False)
        for p in reference.parameters():
            p.requires_grad_(False)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if resumed:
        optimizer.load_state_dict(resumed["optimizer"])
        rng.setstate(resumed["rng"])

    train_items = load_items(config.data)
    eval_items = first_items(config.eval_data, config.eval_n) if config.eval_data else []
    spec = AgentSpec(segmenter=config.segmenter, episode=EpisodeConfig(max_turns=config.max_turns, seed=config.seed))
    agent = build_agent(spec, policy=policy)
    # Training-rollout figures (the same names as evaluation.stats), then the update's, then the held-out ones.
    rollout_columns = ["iou", "first_zoom_hit", "some_zoom_hit", "zooms", "zoom_out_rate", "turns", "zoom_rate",
                       "segment_rate", "submit_rate", "valid_rate", "no_target_accuracy", "false_no_target"]
    columns = ["step", "reward_mean", "reward_std", *rollout_columns, "kl", "clip_frac", "entropy", "skipped_groups",
               "loss", "episodes_per_s", "decisions_per_s", *EVAL_COLUMNS]
    summary: dict[str, Any] = {}

    def evaluate_now(row: dict[str, Any]) -> None:
        policy.train(False)
        result = evaluate(agent, eval_items, prefix=f"grpo-eval-{row['step']}")
        row.update(eval_row(result))
        summary["eval"] = result
        if config.final == "best" and all(result["giou"] > giou for _, giou in run.evaluations):
            policy.save_pretrained(config.out / "best")
        run.held_out(row["step"], result["giou"])

    if eval_items and start_step == 0:
        row = dict.fromkeys(columns)
        row["step"] = 0
        evaluate_now(row)
        run.write(row)
        run.progress(0, {"held-out gIoU": row["eval_giou"]}, force=True)

    for step in range(start_step + 1, config.steps + 1):
        # Rollouts: G sampled episodes of each prompt, all in flight at once.
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
        # The update: clipped policy-gradient passes over the informative episodes.
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
        # The step's figures, held out every eval_every steps; a checkpoint every save_every.
        elapsed = time.perf_counter() - tic
        decisions = sum(len(r) for r in records)
        mean = sum(rewards) / len(rewards)
        trajectories = [r.trajectory for r in results]
        found = {**episode_stats(trajectories), **search_stats(trajectories, [item.mask for item, _ in jobs]),
                 "iou": sum(b.iou for b in breakdowns) / len(breakdowns)}
        row = dict.fromkeys(columns)
        spread = (sum((r - mean) ** 2 for r in rewards) / len(rewards)) ** 0.5
        row.update(step=step, reward_mean=mean, reward_std=spread,
                   **{k: found[k] for k in rollout_columns}, skipped_groups=keep.count(False) // config.group_size,
                   loss=loss_value, episodes_per_s=len(results) / rollout_s, decisions_per_s=decisions / elapsed,
                   **{k: sum(v) / len(v) for k, v in stats.items()})
        if eval_items and (step % config.eval_every == 0 or step == config.steps):
            evaluate_now(row)
        run.write(row)
        run.progress(step, {"reward": row["reward_mean"], "iou": row["iou"], "zoom": row["zoom_rate"],
                            "held-out gIoU": row["eval_giou"]}, force=row["eval_giou"] is not None)
        if step % config.save_every == 0 or step == config.steps:
            policy.save_pretrained(checkpoint)
            torch.save({"optimizer": optimizer.state_dict(), "step": step, "rng": rng.getstate()},
                       checkpoint / "trainer_state.pt")
    held_out = f"held-out gIoU {summary['eval']['giou']:.4f} cIoU {summary['eval']['ciou']:.4f}; " if eval_items else ""
    if config.final == "best" and run.evaluations and (config.out / "best").is_dir():
        # OUT/best holds the first evaluation no later one beat, as max() picks it.
        best_step, best_giou = max(run.evaluations, key=lambda evaluation: evaluation[1])
        summary["final"] = run.save_final(_load(config, config.out / "best"), best_step, which="best")
        held_out = f"held-out gIoU {best_giou:.4f}; "
        which = f"the best by held-out gIoU, step {best_step}"
    else:
        summary["final"] = run.save_final(policy, config.steps)
        which = f"the last step, {config.steps}"
    return run.finish(summary, ["reward_mean", "iou", "eval_giou", "first_zoom_hit", "some_zoom_hit", "zoom_out_rate",
                                "segment_rate", "entropy", "kl"], "GRPO",
                      f"{held_out}model in {config.out / 'final'} ({which})")
