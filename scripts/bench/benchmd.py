"""BENCHMARKS.md sections shared by the benchmark scripts: each owns the text between
``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` and replaces only that."""
from __future__ import annotations

from pathlib import Path

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
