"""Before/after check of a refactor: the same benchmarks run on two commits, compared.

Issue 10 (one scoring model, typed bundle) promised identical accuracy to three decimals and no
slower device path. This script reads result files of ``bench_e2e.py --quick``, ``bench_tiles.py
--quick --parts small mt`` and ``bench_daemon.py --long-frames 0 --sizes 1000,10000`` run at the
commit before the change (a ``git worktree`` of it, same venv) and after, and writes
``results/refactor_check.json`` and its BENCHMARKS.md section.

Invocation (after the runs)::

    .venv/bin/python scripts/bench/compare_refactor.py --before DIR --after DIR --before-commit SHA

``DIR`` holds ``e2e_quick.json``, ``tiles_quick.json`` and ``daemon*.json`` (several daemon runs
per side are averaged by median: latency on a shared machine moves more than the code does).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmd import save_results, write_section  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
START, END = "<!-- refactor:start -->", "<!-- refactor:end -->"
LATENCY_KEYS = ("full_1000_after_capture_median_ms", "full_10000_after_capture_median_ms",
                "pca128_1000_after_capture_median_ms", "pca128_10000_after_capture_median_ms")


def _accuracy(before: dict, after: dict) -> tuple[int, list[str]]:
    same, differ = 0, []
    for k, v in before.items():
        if "auroc" in k and isinstance(v, (int, float)) and k in after:
            if round(v, 3) == round(after[k], 3):
                same += 1
            else:
                differ.append(f"{k}: {v:.4f} -> {after[k]:.4f}")
    return same, differ


def _daemon(folder: Path) -> dict:
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("daemon*.json"))]
    return {k: statistics.median(r[k] for r in runs if k in r) for k in LATENCY_KEYS}, len(runs)


def compare(before: Path, after: Path, commit: str) -> dict:
    res = {"command": " ".join(sys.argv), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "before_commit": commit}
    for name in ("e2e_quick", "tiles_quick"):
        same, differ = _accuracy(json.loads((before / f"{name}.json").read_text()),
                                 json.loads((after / f"{name}.json").read_text()))
        res[f"{name}_auroc_same_3dp"], res[f"{name}_auroc_differ"] = same, len(differ)
        res[f"{name}_differences"] = "; ".join(differ)
    (b, nb), (a, na) = _daemon(before), _daemon(after)
    res["daemon_runs_before"], res["daemon_runs_after"] = nb, na
    for k in LATENCY_KEYS:
        res[f"before_{k}"], res[f"after_{k}"] = b[k], a[k]
    return res


def markdown(r: dict) -> None:
    rows = [f"| {k.replace('_after_capture_median_ms', '').replace('_', ' ')} | {r[f'before_{k}']:.3f} | "
            f"{r[f'after_{k}']:.3f} | {r[f'after_{k}'] / r[f'before_{k}'] - 1:+.0%} |" for k in LATENCY_KEYS]
    text = "\n".join([
        START, "## Refactor check (issue 10): before and after, same benchmarks", "",
        f"`{r['command']}` — {r['date']}; before = commit `{r['before_commit']}`. Accuracy (every AUROC of the "
        "quick benchmarks, to three decimals):", "",
        "| benchmark | identical | different |", "| --- | --- | --- |",
        f"| `bench_e2e.py --quick` (Fashion, MNIST, magnetic tile) | {r['e2e_quick_auroc_same_3dp']} | "
        f"{r['e2e_quick_auroc_differ']} |",
        f"| `bench_tiles.py --quick --parts small mt` | {r['tiles_quick_auroc_same_3dp']} | "
        f"{r['tiles_quick_auroc_differ']} |", "",
        f"Device path after capture (`bench_daemon.py --long-frames 0 --sizes 1000,10000`, median of "
        f"{r['daemon_runs_before']} / {r['daemon_runs_after']} runs, ms, 2-core x86 shared with other jobs):", "",
        "| bank | before | after | change |", "| --- | --- | --- | --- |", *rows, END])
    write_section(text, START, END)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, type=Path)
    ap.add_argument("--after", required=True, type=Path)
    ap.add_argument("--before-commit", required=True)
    ap.add_argument("--out", default=str(RESULTS / "refactor_check.json"))
    args = ap.parse_args()
    save_results(compare(args.before, args.after, args.before_commit), args.out, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
