"""``report.html`` of a batch folder: a static page that leads with the results (the answers counted, gIoU and
cIoU overall, by size and by kind), then what made them (provenance, folded), then every episode: the input
with the ground truth's outline, the final mask (both with a zoomed inset around a small target), and every
turn next to what the agent was shown. Failed and EMPTY episodes are flagged; a count is painted as an alarm
only when it is not zero. Links are relative, so the folder can be moved or served as it is."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from segloop.agent.records import episode_folder
from segloop.evaluation.provenance import flatten
from segloop.tools.files import write_record

_STYLE = """
body{font-family:sans-serif;margin:1.5em;max-width:1400px}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
.prov td,.prov th{text-align:left;font-family:monospace;font-size:90%}
details{border:1px solid #ddd;margin:.4em 0;padding:.3em .6em}
summary{cursor:pointer}.turn{display:flex;gap:1em;margin:.5em 0;align-items:flex-start}
.turn img,.pictures img{max-width:460px;border:1px solid #999}pre{white-space:pre-wrap;margin:.2em 0;font-size:90%}
.pictures{display:flex;gap:1em;flex-wrap:wrap}.pictures figure{margin:0}
.bad{color:#b00}.ok{color:#070}.flag{font-weight:bold;color:#fff;background:#b00;padding:0 .4em;border-radius:3px}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:.5em}
"""


def _table(metrics: dict[str, Any]) -> str:
    rows = [("all", metrics)] + [(f"size {k}", v) for k, v in metrics.get("by_size", {}).items()] + [
        (f"kind {k}", v) for k, v in metrics.get("by_kind", {}).items()]
    body = "".join(f"<tr><th>{html.escape(name)}</th><td>{row['n']}</td><td>{row['giou']:.4f}</td>"
                   f"<td>{row['ciou']:.4f}</td></tr>" for name, row in rows)
    return f"<table><tr><th>samples</th><th>n</th><th>gIoU</th><th>cIoU</th></tr>{body}</table>"


def _did(metrics: dict[str, Any]) -> str:
    """What the episodes did, in a line: turns, valid actions, tool use, throughput."""
    parts = []
    if "turns" in metrics:
        parts.append(f"{metrics['turns']:.2f} turns an episode")
    if "valid_rate" in metrics:
        parts.append(f"{metrics['valid_rate']:.1%} of the actions valid")
    if metrics.get("tool_calls"):
        parts.append("calls: " + ", ".join(f"{name} {count}" for name, count in metrics["tool_calls"].items()))
    if "episodes_per_s" in metrics:
        parts.append(f"{metrics['episodes_per_s']:.2f} episodes/s")
    return f"<p>{html.escape('; '.join(parts))}.</p>" if parts else ""


def _provenance(provenance: dict[str, Any]) -> str:
    """The header: the configuration and the policy's settings (one row per setting), then the runs."""
    rows = [(f"configuration.{k}", v) for k, v in flatten(provenance.get("configuration", {})).items()]
    rows += [(f"policy.{k}", v) for k, v in flatten(provenance.get("policy_settings") or {}).items() if k]
    for key in ("segloop", "git_commit", "host", "started", "ended"):
        rows.append((key, provenance.get(key)))
    runs = provenance.get("runs", [])
    if len(runs) > 1:
        rows.append(("runs", "; ".join(f"{r.get('started')} -> {r.get('ended') or 'interrupted'} on {r.get('host')}: "
                                       f"{r.get('episodes_run')} episodes" for r in runs)))
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(json.dumps(v))}</td></tr>" for k, v in rows)
    configuration = provenance.get("configuration", {})
    agent = configuration.get("agent", {})
    headline = ", ".join(str(x) for x in (agent.get("policy"), agent.get("model"), agent.get("segmenter"),
                                          configuration.get("data"), provenance.get("segloop"),
                                          provenance.get("git_commit")) if x)
    return (f"<details class='prov'><summary><b>What made these results</b> · {html.escape(headline)}</summary>"
            f"<table class='prov'>{body}</table></details>")


def _counts(metrics: dict[str, Any]) -> str:
    n = metrics.get("n", 0)

    def alarm(count: int, what: str) -> str:  # red only when there is something to see
        return f"<span class='bad'>{count} {what}</span>" if count else f"{count} {what}"

    parts = [f"{metrics.get('masks', 0)} masks", alarm(metrics.get("empty", 0), "EMPTY masks"),
             f"{metrics.get('no_target_answers', 0)} 'no such object'", alarm(metrics.get("failed", 0), "FAILED")]
    text = f"<p>{n} samples: {', '.join(parts)}. Failed episodes count as IoU 0.</p>"
    if metrics.get("failed"):
        reasons = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>"
                          for k, v in list(metrics.get("failures", {}).items())[:10])
        text += ("<div class='warn'>Failed episodes are not answers; re-running the batch runs them again."
                 f"<ul>{reasons}</ul></div>")
    if metrics.get("unknown_word_queries"):
        words = ", ".join(metrics.get("unknown_words", {}))
        text += (f"<div class='warn'>{metrics['unknown_word_queries']} queries have words the policy does not "
                 f"know ({html.escape(words)}): its answers to them are guesses.</div>")
    return text


def _episode(record: dict[str, Any]) -> str:
    sample = html.escape(record["sample_id"])
    failure = record.get("failure")
    t = record.get("trajectory")
    if t is None:  # the episode never started (the image could not be used)
        reason = html.escape(f"{failure['kind']}: {failure['reason']}") if failure else "no record"
        return (f"<details><summary><span class='flag'>FAILED</span> {sample}: could not run ({reason})"
                f"</summary></details>")
    folder = f"episodes/{episode_folder(record['sample_id'])}"
    iou = record["iou"]
    turns = []
    for turn in t["turns"]:
        picture = ""
        if turn.get("observation_image"):
            picture = f"<img loading='lazy' src='{folder}/{turn['observation_image']}' alt='turn {turn['turn'] + 1}'>"
        error = f"<div class='bad'>{html.escape(turn['error'])}</div>" if turn.get("error") else ""
        turns.append(f"<div class='turn'>{picture}<div><b>turn {turn['turn'] + 1}</b>"
                     f"<pre>{html.escape(turn['raw_text'])}</pre>{error}"
                     f"<pre>{html.escape(turn['observation'])}</pre></div></div>")
    if failure:
        flag = "<span class='flag'>FAILED</span> "
        ending = html.escape(f"failed ({failure['kind']}: {failure['reason']})")
    elif record.get("empty"):
        flag = "<span class='flag'>EMPTY</span> "
        ending = "submitted an EMPTY mask" if t["submitted"] else "turn budget spent with an EMPTY mask"
    elif t.get("no_target"):
        flag, ending = "", "no such object"
    else:
        flag, ending = "", "submitted" if t["submitted"] else "budget spent (last candidate kept)"
    unknown = ""
    if t.get("unknown_words"):
        unknown = f" · <span class='bad'>unknown words: {html.escape(', '.join(t['unknown_words']))}</span>"
    head = (f"<summary>{flag}<span class='{'ok' if iou >= 0.5 else 'bad'}'>IoU {iou:.3f}</span> · {sample} · "
            f"{record['size_class']} · {len(t['turns'])} turns · {ending} · {html.escape(t['query'])}{unknown}"
            "</summary>")
    pictures = (f"<div class='pictures'><figure><img loading='lazy' src='{folder}/input.png' alt='input'>"
                "<figcaption>input, ground truth outlined (magenta)</figcaption></figure>"
                f"<figure><img loading='lazy' src='{folder}/final.png' alt='final mask'>"
                "<figcaption>final mask (green, yellow outline) and ground truth (magenta)</figcaption></figure></div>")
    return f"<details>{head}{pictures}{''.join(turns)}</details>"


def write_report(out: Path, records: list[dict[str, Any]], metrics: dict[str, Any]) -> Path:
    """Write ``out/report.html``; failed episodes first, then the worst answers, as that is where one looks.
    Episode pictures are linked only where the batch saved them (``--no-overlays`` saves none)."""
    ordered = sorted(records, key=lambda r: (r.get("failure") is None, r.get("iou", -1.0), r["sample_id"]))
    episodes = []
    for record in ordered:
        part = _episode(record)
        if not (out / "episodes" / episode_folder(record["sample_id"]) / "final.png").exists():
            part = _strip_images(part)  # no links to pictures that were not saved
        episodes.append(part)
    all_failed = records and metrics.get("failed") == len(records)
    table = ("<p class='bad'><b>Every episode failed: there are no results to score.</b></p>" if all_failed
             else _table(metrics))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>segloop batch</title><style>{_STYLE}</style>"
            f"</head><body><h1>segloop batch: {len(records)} episodes</h1>"
            f"<h2>Results</h2>{_counts(metrics)}{table}{_did(metrics)}{_provenance(metrics.get('provenance', {}))}"
            f"<h2>Episodes (failed first, then worst first)</h2>{''.join(episodes)}</body></html>")
    return write_record(out / "report.html", page)


def _strip_images(part: str) -> str:
    """An episode's section without its pictures (they were not saved)."""
    part = re.sub(r"<div class='pictures'>.*?</div>", "", part, flags=re.S)
    return re.sub(r"<img [^>]*>", "", part)
