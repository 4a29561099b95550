"""BENCHMARKS.md sections shared by the benchmark scripts: each owns the text between
``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` and replaces only that."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

BENCHMARKS = Path(__file__).resolve().parents[2] / "BENCHMARKS.md"


def write_section(section: str, start: str, end: str, path: Path = BENCHMARKS) -> None:
    """Replace (or append) the marked section; re-reads the file right before writing."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        a, b = text.index(start), text.index(end) + len(end)
        text = text[:a] + section + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def save_results(res: dict, out: str | Path, markdown: Callable[[dict], None] | None = None) -> dict:
    """Round floats to 4 digits, write ``res`` as ``out`` (JSON, sorted keys), update BENCHMARKS.md
    with ``markdown(res)`` (unless None) and print the JSON; returns the rounded results."""
    res = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    if markdown is not None:
        markdown(res)
    print(json.dumps(res, indent=1, sort_keys=True))
    return res
