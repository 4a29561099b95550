"""Server-rendered SVG charts for the trends page (no chart library, nothing fetched).

Each function returns a complete ``<svg>`` element as :class:`markupsafe.Markup`; colours are SVG
presentation attributes (the page's Content-Security-Policy allows no inline styles).

Example:
    >>> svg = score_chart([(0, 0.2, 0.5, "PASS"), (60, 0.7, 0.5, "REJECT")], [], 0.5)
    >>> svg.startswith("<svg") and "threshold" in svg
    True
"""
from __future__ import annotations

import math
import time
from typing import Iterable, Sequence

from markupsafe import Markup, escape

W, H = 900, 260
PAD_L, PAD_R, PAD_T, PAD_B = 56, 14, 14, 34
COLORS = {"PASS": "#2e7d32", "REJECT": "#c62828", "ERROR": "#6a1b9a", "mean": "#1565c0", "max": "#ef6c00",
          "threshold": "#c62828", "calibration": "#90a4ae", "recent": "#1565c0", "grid": "#e0e0e0",
          "text": "#37474f"}


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    return f"{v:.3g}" if 1e-3 <= a < 1e4 else f"{v:.2e}"


def _frame(title: str, ymin: float, ymax: float, yfmt=_fmt) -> list[str]:
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" class="chart" role="img" '
           f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
           f'<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>']
    for i in range(5):
        v = ymin + (ymax - ymin) * i / 4
        y = _y(v, ymin, ymax)
        out.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" stroke="{COLORS["grid"]}"/>'
                   f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
                   f'fill="{COLORS["text"]}">{escape(yfmt(v))}</text>')
    return out


def _y(v: float, ymin: float, ymax: float) -> float:
    span = (ymax - ymin) or 1.0
    return PAD_T + (H - PAD_T - PAD_B) * (1 - (v - ymin) / span)


def _x(t: float, t0: float, t1: float) -> float:
    span = (t1 - t0) or 1.0
    return PAD_L + (W - PAD_L - PAD_R) * (t - t0) / span


def _time_axis(t0: float, t1: float, n: int = 6) -> list[str]:
    out = []
    fmt = "%H:%M" if t1 - t0 <= 2 * 86400 else "%m-%d %H:%M"
    for i in range(n + 1):
        t = t0 + (t1 - t0) * i / n
        out.append(f'<text x="{_x(t, t0, t1):.1f}" y="{H - 12}" text-anchor="middle" font-size="11" '
                   f'fill="{COLORS["text"]}">{time.strftime(fmt, time.localtime(t))}</text>')
    return out


def _empty(title: str, text: str = "no decisions in this period") -> Markup:
    return Markup(f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" class="chart" role="img" '
                  f'aria-label="{escape(title)}"><title>{escape(title)}</title><rect width="{W}" height="{H}" '
                  f'fill="#ffffff"/><text x="{W / 2}" y="{H / 2}" text-anchor="middle" font-size="14" '
                  f'fill="{COLORS["text"]}">{escape(text)}</text></svg>')


def score_chart(points: Sequence[tuple], buckets: Sequence[dict], threshold: float | None,
                t_range: tuple[float, float] | None = None) -> Markup:
    """Score over time with the threshold line: raw points (``(ts, score, threshold, decision)``)
    when there are few, else per-bucket mean and max (``buckets`` from ``JournalReader.series``)."""
    title = "Score over time (threshold in red)"
    scored = [p for p in points if p[1] is not None and math.isfinite(p[1])]
    if not scored and not buckets:
        return _empty(title)
    ts = [p[0] for p in scored] or [b["t"] for b in buckets]
    t0, t1 = t_range or (min(ts), max(ts) + 1.0)
    vals = [p[1] for p in scored] + [b["max"] for b in buckets if b["max"] is not None]
    thr = [p[2] for p in scored if p[2] is not None] + [b["threshold"] for b in buckets if b["threshold"] is not None]
    ymax = max(vals + thr + [threshold or 0.0]) * 1.08 or 1.0
    out = _frame(title, 0.0, ymax) + _time_axis(t0, t1)
    if scored:
        for t, s, _, d in scored:
            out.append(f'<circle cx="{_x(t, t0, t1):.1f}" cy="{_y(s, 0, ymax):.1f}" r="2.2" '
                       f'fill="{COLORS.get(d, COLORS["PASS"])}"/>')
        steps = [(t, th) for t, _, th, _ in scored if th is not None]
    else:
        for key in ("mean", "max"):
            pts = " ".join(f"{_x(b['t'], t0, t1):.1f},{_y(b[key], 0, ymax):.1f}" for b in buckets
                           if b[key] is not None)
            out.append(f'<polyline points="{pts}" fill="none" stroke="{COLORS[key]}" stroke-width="1.5"/>')
        steps = [(b["t"], b["threshold"]) for b in buckets if b["threshold"] is not None]
    if steps:
        steps[0] = (t0, steps[0][1])      # the first known threshold, drawn from the left edge
        pts = []
        for (t, th), nxt in zip(steps, steps[1:] + [(t1, steps[-1][1])]):
            pts += [f"{_x(t, t0, t1):.1f},{_y(th, 0, ymax):.1f}", f"{_x(nxt[0], t0, t1):.1f},{_y(th, 0, ymax):.1f}"]
        out.append(f'<polyline class="threshold" points="{" ".join(pts)}" fill="none" '
                   f'stroke="{COLORS["threshold"]}" stroke-width="1.5" stroke-dasharray="6 3"/>')
    keys = (("PASS", "● pass "), ("REJECT", "● reject "), ("ERROR", "● error ")) if scored else \
        (("mean", "— mean "), ("max", "— max per bucket "))
    legend = "".join(f'<tspan fill="{COLORS[k]}">{label}</tspan>' for k, label in keys)
    out.append(f'<text x="{W - PAD_R}" y="{PAD_T + 10}" text-anchor="end" font-size="11" '
               f'fill="{COLORS["text"]}">{legend}<tspan fill="{COLORS["threshold"]}">- - threshold</tspan>'
               '</text></svg>')
    return Markup("".join(out))


def reject_rate_chart(hours: Sequence[dict], t_range: tuple[float, float] | None = None) -> Markup:
    """Reject rate (rejects + errors over parts) per hour as bars (``hours`` from ``JournalReader.series``)."""
    title = "Reject rate per hour"
    hours = [h for h in hours if h["n"]]
    if not hours:
        return _empty(title)
    rates = [((h["rejects"] or 0) + (h["errors"] or 0)) / h["n"] for h in hours]
    ymax = max(max(rates) * 1.15, 0.01)
    t0, t1 = t_range or (hours[0]["t"], hours[-1]["t"] + 3600)
    t0 = min(t0, hours[0]["t"])
    out = _frame(title, 0.0, ymax, lambda v: f"{100 * v:.1f} %") + _time_axis(t0, t1)
    bw = max(1.0, (W - PAD_L - PAD_R) * 3600 / (t1 - t0) - 2)
    for h, r in zip(hours, rates):
        x, y = _x(h["t"], t0, t1) + 1, _y(r, 0, ymax)
        out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" height="{H - PAD_B - y:.1f}" '
                   f'fill="{COLORS["REJECT"]}"><title>{time.strftime("%Y-%m-%d %H:00", time.localtime(h["t"]))}: '
                   f'{100 * r:.2f} % of {h["n"]} parts</title></rect>')
    out.append("</svg>")
    return Markup("".join(out))


def histogram_chart(recent: Iterable[float], calibration: Iterable[float] | None, threshold: float | None,
                    bins: int = 40) -> Markup:
    """Recent PASS scores against the bundle's calibration scores (each normalised to a density)."""
    title = "Recent PASS scores (blue) against the bundle's calibration scores (grey)"
    recent = [float(v) for v in recent if v is not None and math.isfinite(v)]
    cal = [float(v) for v in (calibration if calibration is not None else []) if math.isfinite(v)]
    if not recent and not cal:
        return _empty(title, "no PASS scores yet")
    hi = max(recent + cal + [threshold or 0.0]) * 1.05 or 1.0
    width = hi / bins

    def dens(vals):
        c = [0] * bins
        for v in vals:
            c[min(bins - 1, max(0, int(v / width)))] += 1
        n = max(1, len(vals))
        return [x / n for x in c]

    dr, dc = dens(recent), dens(cal)
    ymax = max(dr + dc) * 1.1 or 1.0
    out = _frame(title, 0.0, ymax, lambda v: f"{100 * v:.0f} %")
    bw = (W - PAD_L - PAD_R) / bins
    for series, color, shrink in ((dc, COLORS["calibration"], 0.0), (dr, COLORS["recent"], 0.3)):
        for i, v in enumerate(series):
            if v:
                x, y = PAD_L + i * bw + bw * shrink / 2, _y(v, 0, ymax)
                out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw * (1 - shrink):.1f}" '
                           f'height="{H - PAD_B - y:.1f}" fill="{color}" fill-opacity="0.85"/>')
    for i in range(0, bins + 1, max(1, bins // 8)):
        out.append(f'<text x="{PAD_L + i * bw:.1f}" y="{H - 12}" text-anchor="middle" font-size="11" '
                   f'fill="{COLORS["text"]}">{escape(_fmt(i * width))}</text>')
    if threshold is not None:
        x = PAD_L + threshold / width * bw
        out.append(f'<line class="threshold" x1="{x:.1f}" x2="{x:.1f}" y1="{PAD_T}" y2="{H - PAD_B}" '
                   f'stroke="{COLORS["threshold"]}" stroke-width="2" stroke-dasharray="6 3"/>')
    out.append(f'<text x="{W - PAD_R}" y="{PAD_T + 10}" text-anchor="end" font-size="11" fill="{COLORS["text"]}">'
               f'{len(recent)} recent, {len(cal)} calibration; - - threshold</text></svg>')
    return Markup("".join(out))
