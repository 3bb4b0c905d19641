"""``segloop batch --data SPEC --out DIR``: agent episodes over a dataset, at most N in flight, scored and
resumable (``segloop.evaluation.batch``): ``trajectories.jsonl``, ``run.json``, ``metrics.json``, ``report.html``.

Exit status: 0 when every episode ran to an answer, 1 when any episode failed (a server down, a segmenter
crash, an unreadable image: re-running the same command runs those again) or the batch stopped early during an
outage, 2 for a usage error, a server that fails the preflight (nothing is run) or a file that cannot be written
(a full disk: the same command resumes), 130 when interrupted (the saved episodes are kept; the same command
resumes)."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from pathlib import Path
from typing import Any

from segloop.cli.agent_options import add_agent_arguments, agent_spec, compared_settings
from segloop.cli.options import OptionsError
from segloop.cli.paths import check_out_folder

# Failure reasons printed in the console summary (all are in metrics.json and report.html).
SHOWN_FAILURES = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from segloop.data.specs import SPEC_HELP

    parser.add_argument("--data", required=True, help=f"the samples: {SPEC_HELP}")
    parser.add_argument("--out", type=Path, required=True, help="output folder; re-running into it resumes")
    parser.add_argument("--concurrency", type=int, default=4, help="episodes in flight")
    parser.add_argument("--limit", type=int, default=None, help="only the first K samples (default: all)")
    parser.add_argument("--no-overlays", action="store_true", help="skip the per-episode PNGs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.epilog = ("exit status: 0 every episode answered; 1 some episode FAILED (re-run the same command to run "
                     "those again) or the batch stopped early during an outage; 2 usage error, a server that fails "
                     "the preflight (nothing run) or a file that cannot be written (the same command resumes); "
                     "130 interrupted (the same command resumes)")
    # Evaluations are greedy unless asked otherwise: a score should not depend on sampling luck.
    add_agent_arguments(parser, defaults={"temperature": 0.0})


def main(args: argparse.Namespace) -> int:
    from segloop.agent.policy import PolicyUnavailable
    from segloop.evaluation.batch import BatchError
    from segloop.tools.files import WriteError

    try:
        metrics = asyncio.run(_main(args))
    except KeyboardInterrupt:
        _interrupted(args)
        return 130
    except PolicyUnavailable as exc:  # the preflight: before any episode
        print(f"segloop batch: nothing was run: {exc}", file=sys.stderr)
        return 2
    except WriteError as exc:  # a full disk: the finished episodes are saved, the .tmp files removed
        print(f"segloop batch: {exc}; {_saved(args)}. Free some space, then resume with: {_resume_command(args)}",
              file=sys.stderr)
        return 2
    except (BatchError, OptionsError, ValueError, OSError, RuntimeError, ImportError) as exc:
        print(f"segloop batch: {exc}", file=sys.stderr)
        return 2
    print(summary_text(metrics, args.out))
    if metrics.get("stopped_early"):
        print(f"segloop batch: STOPPED EARLY: {metrics['stopped_early']}; {metrics['not_run']} samples were not run. "
              f"{_saved(args)}; resume with: {_resume_command(args)}", file=sys.stderr)
    return 1 if metrics["failed"] or metrics.get("stopped_early") else 0


def summary_text(metrics: dict[str, Any], out: Path) -> str:
    """The console summary: what made the results, the table (unless every episode failed), what the
    answers were, and the failures with their first reasons."""
    from segloop.evaluation.provenance import flatten
    from segloop.tools.masks import format_table

    provenance = metrics.get("provenance", {})
    configuration = flatten(provenance.get("configuration", {}))
    def shown(key: str, value: Any) -> Any:
        if value is None:  # a model left to its default (compact: the bundled checkpoint); an unseeded episode
            return "(default)" if key.endswith("model") else "none"
        return value

    made_by = ", ".join(f"{k.removeprefix('agent.')}={shown(k, v)}" for k, v in configuration.items()
                        if v not in ({}, []))
    # Lists and tables (the compact policy's vocabulary) are counted here; metrics.json holds them whole.
    settings = ", ".join(f"{k}=<{len(v)} entries>" if isinstance(v, (list, dict)) else f"{k}={v}"
                         for k, v in (provenance.get("policy_settings") or {}).items())
    commit = provenance.get("git_commit") or "no git checkout"
    lines = [f"made by: {made_by}", f"policy settings: {settings}",
             f"segloop {provenance.get('segloop')} ({commit}) on {provenance.get('host')}, "
             f"{provenance.get('started')} to {provenance.get('ended')}"]
    failed, n = metrics["failed"], metrics["n"]
    if n and failed == n:
        lines.append(f"ALL {n} EPISODES FAILED: there are no results to score.")
    else:
        lines.append(format_table(metrics))
        lines.append(f"answers: {_count(metrics['masks'], 'mask')}, {_count(metrics['empty'], 'EMPTY mask')} "
                     f"(submitted without 'no such object'), {metrics['no_target_answers']} 'no such object'"
                     + (f", {metrics['refused']} REFUSED (unknown words; no mask)" if metrics.get("refused") else "")
                     + (f"; {failed} FAILED (counted as IoU 0)" if failed else ""))
        lines.append(f"mean turns {metrics['turns']:.2f}, valid actions {metrics['valid_rate']:.2%}, "
                     f"{metrics['episodes_per_s']:.2f} episodes/s")
    if failed:
        kinds = ", ".join(f"{kind} {count}" for kind, count in metrics["failed_by_kind"].items())
        lines.append(f"FAILED: {failed} of {n} episodes ({kinds}); they are not answers, and re-running the same "
                     "command runs them again. First reasons:")
        lines += [f"  {sample}: {reason}" for sample, reason in list(metrics["failures"].items())[:SHOWN_FAILURES]]
    if metrics.get("unknown_word_queries"):
        words = ", ".join(repr(w) for w in metrics["unknown_words"])
        k = metrics["unknown_word_queries"]
        outcome = ("they were refused (--guess-unknown-words answers them anyway)" if metrics.get("refused")
                   else "its answers to them are guesses")
        lines.append(f"{k} quer{'y has' if k == 1 else 'ies have'} words the policy does not know ({words}): {outcome}")
    lines.append(f"results in {out} (metrics.json, report.html)")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _interrupted(args: argparse.Namespace) -> None:
    """Ctrl-C: how many episodes are saved, and the command that resumes."""
    print(f"segloop batch: interrupted; {_saved(args)}. Resume with: {_resume_command(args)}", file=sys.stderr,
          flush=True)


def _saved(args: argparse.Namespace) -> str:
    """How many episodes the output folder holds, in words."""
    from segloop.evaluation.batch import TRAJECTORIES, BatchError, failed, read_finished

    try:
        records = read_finished(args.out / TRAJECTORIES)
    except (BatchError, OSError):
        records = []
    broken = sum(failed(r) for r in records)
    return f"{len(records)} episodes saved in {args.out}" + (f" ({broken} failed)" if broken else "")


def _resume_command(args: argparse.Namespace) -> str:
    """The command line that resumes this batch: this one."""
    return shlex.join([*_program(), *getattr(args, "_argv", [])])


def _program() -> list[str]:
    """How this process was started: ``segloop`` (the installed script) or ``python -m segloop``."""
    if Path(sys.argv[0]).name == "segloop":
        return [sys.argv[0]]
    return [sys.executable, "-m", "segloop"]


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    from segloop.agent.policy import preflight, unknown_words
    from segloop.data.specs import load_samples, spec_identity
    from segloop.evaluation.batch import BatchError, run_batch
    from segloop.policies.assembly import build_agent
    from segloop.policies.registry import policy_settings, unknown_words_note

    if args.limit is not None and args.limit < 1:
        raise BatchError("--limit must be at least 1")
    check_out_folder(args.out)  # a ValueError: one line, exit 2
    samples = load_samples(args.data)[: args.limit]
    if not samples:
        raise BatchError(f"{args.data} holds no samples")
    spec = agent_spec(args, ground_truth=True)
    agent = build_agent(spec)
    unknown = {s.id: unknown_words(agent.policy, s.query) for s in samples}
    if any(unknown.values()):
        words = list(dict.fromkeys(w for ws in unknown.values() for w in ws))
        queries = sum(bool(ws) for ws in unknown.values())
        print(f"segloop batch: note: {queries} of {len(samples)} queries: "
              f"{unknown_words_note(agent.policy.name, words[:8], 'batch --data SPEC --out DIR')}", file=sys.stderr,
              flush=True)
    if note := await preflight(agent.policy):
        print(f"segloop batch: note: {note}", file=sys.stderr, flush=True)
    configuration = {"agent": compared_settings(spec), "data": spec_identity(args.data)}
    return await run_batch(agent, samples, args.out, args.concurrency, progress=not args.quiet,
                           save_overlays=not args.no_overlays, configuration=configuration,
                           policy_settings=policy_settings(agent.policy))
