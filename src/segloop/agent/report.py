"""``report.html`` of a batch folder: a static page with the metrics and every episode's turns next to
their overlays. Links are relative, so the folder can be moved or served as it is."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from segloop.agent.episode import episode_folder

_STYLE = """
body{font-family:sans-serif;margin:1.5em;max-width:1400px}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
details{border:1px solid #ddd;margin:.4em 0;padding:.3em .6em}
summary{cursor:pointer}.turn{display:flex;gap:1em;margin:.5em 0;align-items:flex-start}
.turn img,.final img{max-width:360px;border:1px solid #999}pre{white-space:pre-wrap;margin:.2em 0;font-size:90%}
.bad{color:#b00}.ok{color:#070}
"""


def _table(metrics: dict[str, Any]) -> str:
    rows = [("all", metrics)] + [(f"size={k}", v) for k, v in metrics.get("by_size", {}).items()] + [
        (f"kind={k}", v) for k, v in metrics.get("by_kind", {}).items()]
    body = "".join(f"<tr><th>{html.escape(name)}</th><td>{row['n']}</td><td>{row['giou']:.4f}</td>"
                   f"<td>{row['ciou']:.4f}</td></tr>" for name, row in rows)
    return f"<table><tr><th>group</th><th>n</th><th>gIoU</th><th>cIoU</th></tr>{body}</table>"


def _episode(record: dict[str, Any]) -> str:
    sample = html.escape(record["sample_id"])
    if "error" in record:
        reason = html.escape(record["error"])
        return f"<details><summary class='bad'>{sample}: could not run ({reason})</summary></details>"
    t = record["trajectory"]
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
    ending = "submitted" if t["submitted"] else "budget spent"
    if t.get("policy_error"):
        ending = f"policy error: {html.escape(t['policy_error'])}"
    head = (f"<summary><span class='{'ok' if iou >= 0.5 else 'bad'}'>IoU {iou:.3f}</span> · {sample} · "
            f"{record['size_class']} · {len(t['turns'])} turns · {ending} · {html.escape(t['query'])}</summary>")
    final = f"<div class='final'>final mask: <img loading='lazy' src='{folder}/mask.png' alt='mask'></div>"
    return f"<details>{head}{''.join(turns)}{final}</details>"


def write_report(out: Path, records: list[dict[str, Any]], metrics: dict[str, Any]) -> Path:
    """Write ``out/report.html``; episodes worst first, as that is where one looks."""
    ordered = sorted(records, key=lambda r: (r.get("iou", -1.0), r["sample_id"]))
    extra = {k: metrics[k] for k in ("turns", "valid_rate", "tool_calls", "submit_rate", "policy_errors",
                                      "episodes_per_s") if k in metrics}
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>segloop batch</title><style>{_STYLE}</style>"
            f"</head><body><h1>segloop batch: {len(records)} episodes</h1>{_table(metrics)}"
            f"<pre>{html.escape(json.dumps(extra, indent=1))}</pre><h2>Episodes (worst first)</h2>"
            f"{''.join(_episode(r) for r in ordered)}</body></html>")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
