"""The one HTML report writer: a self-contained page (no scripts, no network) with a table of
figures, images referenced relatively, and tables of records.

Used by ``anomaly-train evaluate`` and ``fit`` reports and by the device audits, so a report
folder can be copied off a device and opened anywhere.

Example:
    >>> import tempfile, pathlib
    >>> p = html_report(pathlib.Path(tempfile.mkdtemp()) / "r.html", "Demo", {"auroc": 0.97},
    ...                 [("ROC", "roc.png")], [("Scores", [{"image": "a.png", "score": 0.5}])])
    >>> "<h1>Demo</h1>" in p.read_text()
    True
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Sequence


def fmt(v: Any) -> str:
    """A value as a table cell: floats to 4 decimals (``nan`` as empty), records as JSON."""
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return "" if v is None else str(v)


def _table(recs: Sequence[dict]) -> str:
    cols: list[str] = []
    for r in recs:
        cols += [k for k in r if k not in cols]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in recs)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_report(path: str | Path, title: str, metrics: dict, images: Sequence[tuple[str, str]] = (),
                tables: Sequence[tuple[str, Sequence[dict]]] = (), intro: str = "") -> Path:
    """Write the page: ``metrics`` as a key/value table, ``images`` as ``(caption, relative src)``
    figures, then each non-empty ``(heading, records)`` table."""
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(fmt(v))}</td></tr>" for k, v in metrics.items())
    imgs = "".join(f'<figure><a href="{html.escape(src)}"><img src="{html.escape(src)}" alt="{html.escape(cap)}" '
                   f'loading="lazy"></a><figcaption>{html.escape(cap)}</figcaption></figure>' for cap, src in images)
    tabs = "".join(f"<h2>{html.escape(name)}</h2>{_table(recs)}" for name, recs in tables if recs)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}}
figure{{display:inline-block;margin:0 1em 1em 0;vertical-align:top}}img{{max-width:520px}}
figcaption{{font-size:12px;max-width:520px}}</style></head><body><h1>{html.escape(title)}</h1>
{f"<p>{html.escape(intro)}</p>" if intro else ""}<table>{rows}</table>{imgs}{tabs}</body></html>
"""
    Path(path).write_text(page)
    return Path(path)
