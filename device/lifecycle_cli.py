"""Life-cycle subcommands of ``anomaly-device``: ``capture``, ``deploy``, ``rollback``, ``bundles``, ``learn``.

Top-level imports stay light (argparse only). Errors raise :class:`~device.errors.AnomalyError`
subclasses, which ``anomaly-device`` prints as one line and exits 2.

Example:
    $ anomaly-device capture --config device.toml --out data/ --count 200 --interval-ms 500
    $ anomaly-device deploy bundle/ --config device.toml
    $ anomaly-device deploy --config device.toml --target-frr 0.005
    $ anomaly-device bundles --config device.toml
    $ anomaly-device learn --config device.toml --from-journal 1841 1907 --deploy
    $ anomaly-device rollback --config device.toml
"""
from __future__ import annotations

import json
import sys
import time

DEFAULT_CONFIG = "/etc/anomaly-device/device.toml"


class ProgressBar:
    """A one-line bar on a terminal; on a pipe or log, a plain line every 10 % (no control codes).

    Example:
        >>> import io
        >>> bar = ProgressBar(4, "capture", stream=io.StringIO())
        >>> for i in range(1, 5): bar(i, 4)
        >>> bar.stream.getvalue().splitlines()[-1]
        'capture: 4/4'
    """

    def __init__(self, total: int, label: str, stream=None):
        self.total, self.label = max(1, int(total)), label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._step = -1
        self._t0 = time.monotonic()

    def __call__(self, done: int, total: int | None = None) -> None:
        total = max(1, int(total or self.total))
        if self.tty:
            n = int(30 * done / total)
            rate = done / max(1e-9, time.monotonic() - self._t0)
            self.stream.write(f"\r{self.label} [{'#' * n}{'.' * (30 - n)}] {done}/{total} ({rate:.1f}/s)")
            if done >= total:
                self.stream.write("\n")
        else:
            step = int(10 * done / total)
            if step == self._step and done < total:
                return
            self._step = step
            self.stream.write(f"{self.label}: {done}/{total}\n")
        self.stream.flush()


def _cfg(args):
    from device.config import load_config

    return load_config(args.config)


def _print(obj, as_json: bool, lines) -> None:
    print(json.dumps(obj, indent=2, default=str) if as_json else "\n".join(lines()))


# ---------------------------------------------------------------- capture
def _capture(args) -> int:
    import signal

    from device.capture import capture

    cfg = _cfg(args)
    stop = {"now": False}
    trig_holder = {}

    def on_int(*_):
        stop["now"] = True

    old = signal.signal(signal.SIGINT, on_int)
    if cfg.trigger.mode == "software":   # SIGUSR1 fires one capture, as for `run`
        from device.capture import make_trigger

        trig_holder["t"] = make_trigger(cfg)
        signal.signal(signal.SIGUSR1, lambda *_: trig_holder["t"].fire())
    try:
        rec = capture(cfg, args.out, args.count, args.interval_ms, append=args.append,
                      progress=ProgressBar(args.count, "capture"), stop=lambda: stop["now"],
                      trigger=trig_holder.get("t"))
    finally:
        signal.signal(signal.SIGINT, old)
    res = {k: v for k, v in rec.items() if k != "images"}
    _print(res, args.json, lambda: [
        f"captured {rec['count']} of {rec['requested']} images into {args.out}/train/good "
        f"({rec['source_name']}, {rec['resolution'][0]}x{rec['resolution'][1]}"
        + (f", ROI {rec['roi']}" if rec.get("roi") else "") + ")" if rec["count"] else
        f"captured no image into {args.out}",
        f"capture conditions in {args.out}/capture.json; train with: anomaly-train fit --data {args.out} ..."])
    return 0 if rec["count"] == args.count else 1


# ---------------------------------------------------------------- versions
def _unit(args):
    return args.unit or None


def _activation_lines(out: dict) -> list[str]:
    head = {"confirmed": "confirmed: decisions now carry the new digest",
            "reloaded": "service reloaded (" + out.get("detail", "") + ")",
            "switched": "switched (" + out.get("detail", "") + ")",
            "unchanged": "already active, nothing to do"}[out["status"]]
    lines = [f"{out['action']}: version {out['version']} active (from {out.get('from') or 'none'}); {head}"]
    if out.get("reload"):
        lines.append(f"  reload: {out['reload']}")
    if out.get("pruned"):
        lines.append(f"  removed old versions: {', '.join(out['pruned'])}")
    lines += [f"  warning: {w}" for w in out.get("warnings", [])]
    return lines


def _deploy(args) -> int:
    from device.errors import ConfigError
    from device.versions import deploy

    kw = {"unit": _unit(args), "wait_s": args.wait, "reload": not args.no_reload}
    if args.target_frr is not None:
        from device.retarget import retarget

        res = retarget(_cfg(args), args.target_frr, args.bundle, **kw)
        _print(res, args.json, lambda: _retarget_lines(res))
        return 0
    if not args.bundle:
        raise ConfigError("deploy: give the bundle to deploy (a folder, or a stored version's digest prefix), or "
                          "--target-frr RATE to re-target the active version's threshold")
    out = deploy(_cfg(args), args.bundle, **kw)
    _print(out, args.json, lambda: _activation_lines(out))
    return 0


def _retarget_lines(res: dict) -> list[str]:
    t = res["threshold"]
    lines = [f"re-targeted version {res['version']} (parent {res['parent'][:16]}): threshold {t['old']:.6g} -> "
             f"{t['new']:.6g}, target FRR {t['old_target_frr']:g} -> {t['target_frr']:g} "
             f"({t['achieved_frr']:.2%} of {t['n_calibration']} calibration parts above it)"]
    if t.get("note"):
        lines.append(f"  note: {t['note']}")
    return lines + _activation_lines(res["deploy"])


def _rollback(args) -> int:
    from device.versions import rollback

    out = rollback(_cfg(args), unit=_unit(args), wait_s=args.wait, reload=not args.no_reload)
    _print(out, args.json, lambda: _activation_lines(out))
    return 0


def _bundles(args) -> int:
    from device.versions import history, list_versions

    cfg = _cfg(args)
    vs = list_versions(cfg)

    def lines():
        if not vs:
            return [f"no stored versions beside {cfg.bundle.path}"]
        out = [f"{'':2}{'version':<17}{'created':<21}{'bank':>7} {'threshold':>10}  {'parent':<17}source"]
        for v in vs:
            mark = "*" if v.get("active") else "-" if v.get("previous") else " "
            if "error" in v:
                out.append(f"{mark} {v['version']:<17}ERROR {v['error']}")
                continue
            thr = f"{v['threshold']:.5g}" if isinstance(v.get("threshold"), (int, float)) else "?"
            out.append(f"{mark} {v['version']:<17}{str(v.get('created') or '?'):<21}{str(v.get('bank_size')):>7} "
                       f"{thr:>10}  {str(v.get('parent') or '-'):<17}{v.get('source', '?')}")
        out.append("(* active, - previous: the target of rollback)")
        if args.history:
            out += [f"  {h.get('time')} {h.get('action')} {h.get('from')} -> {h.get('to')}: {h.get('result')}"
                    for h in history(cfg, args.history)]
        return out

    _print(vs, args.json, lines)
    return 0


# ---------------------------------------------------------------- learn
def _learn(args) -> int:
    from device.learn import learn

    bars = {}

    def progress(stage, done, total):
        bars.setdefault(stage, ProgressBar(total, stage))(done, total)

    res = learn(_cfg(args), good=args.good or (), rows=args.from_journal or (), days=args.days, out=args.out,
                deploy=args.deploy, preview_max=args.preview_max, progress=None if args.json else progress,
                unit=_unit(args), wait_s=args.wait, reload=not args.no_reload)
    _print(res, args.json, lambda: _learn_lines(res, args))
    return 0


def _learn_lines(res: dict, args) -> list[str]:
    t, b, p = res["threshold"], res["bank"], res["preview"]
    before, after = res["scores_before"], res["scores_after"]
    lines = [f"new version {res['version']} (parent {res['parent'][:16]}): {res['images']} image(s) learned",
             f"  bank {b['before']} -> {b['after']} rows (cap {b['cap'] or 'none'}, {b['subsample']})",
             f"  k-NN: {b.get('compression', {}).get('reason', 'brute-force scan')}",
             f"  threshold {t['old']:.6g} -> {t['new']:.6g} at target FRR {t['target_frr']:g} ({t['estimator']['kind']})",
             f"  learned images' scores: median {_med(before):.4g} -> {_med(after):.4g}"]
    if t["running_source"] != "bundle":
        lines.append(f"  note: the config sets the running threshold ({t['running_source']}): {t['running']:.6g}")
    if p.get("available"):
        lines.append(f"  preview, last {p['days']:g} days: {p['rejects_now_pass']} of {p['archived_rejects']} archived "
                     f"rejects would now pass, {p['passes_now_reject']} of {p['archived_passes']} archived passes "
                     f"would now reject" + (f" ({p['missing_images']} images gone)" if p["missing_images"] else ""))
    else:
        lines.append(f"  preview: not available ({p.get('reason')})")
    if res.get("deploy"):
        lines += _activation_lines(res["deploy"])
    else:
        lines.append(f"  not deployed; activate with: anomaly-device deploy {res['version']} --config {args.config}")
    return lines


def _med(v) -> float:
    s = sorted(v)
    return s[len(s) // 2] if s else float("nan")


# ---------------------------------------------------------------- registration
def _service_opts(p) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"TOML config (default {DEFAULT_CONFIG})")
    p.add_argument("--no-reload", action="store_true", help="switch only; do not ask a running service to reload")
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the journal's confirmation (30)")
    p.add_argument("--unit", default="anomaly-device",
                   help="systemd unit reloaded when the service's pid cannot be signalled ('' = never systemctl)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def register(sub) -> None:
    """Add the life-cycle subcommands to ``anomaly-device``'s subparsers."""
    c = sub.add_parser("capture", help="grab training images with the configured camera, trigger and ROI")
    c.add_argument("--config", default=DEFAULT_CONFIG)
    c.add_argument("--out", required=True, help="data set folder (MVTec layout: OUT/train/good, OUT/capture.json)")
    c.add_argument("--count", type=int, required=True, help="images to capture")
    c.add_argument("--interval-ms", type=float, help="free-run: one frame every MS; other triggers: minimum gap")
    c.add_argument("--append", action="store_true", help="add to an existing OUT/train/good")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_capture)

    d = sub.add_parser("deploy", help="verify a bundle, store it as a version, activate it, reload the service; "
                                      "with --target-frr: a new version at another threshold")
    d.add_argument("bundle", nargs="?", help="bundle directory, or a stored version's digest prefix (with "
                                             "--target-frr: default the active version)")
    d.add_argument("--target-frr", type=float, metavar="RATE",
                   help="deploy a new version of BUNDLE (default: the active one) whose threshold is re-derived "
                        "at this false-reject rate from its calibration scores (0 <= RATE < 1)")
    _service_opts(d)
    d.set_defaults(func=_deploy)

    r = sub.add_parser("rollback", help="re-activate the previous version")
    _service_opts(r)
    r.set_defaults(func=_rollback)

    b = sub.add_parser("bundles", help="list stored versions (digest, created, source, bank, threshold, parent)")
    b.add_argument("--config", default=DEFAULT_CONFIG)
    b.add_argument("--history", type=int, default=0, metavar="N", help="also show the last N deploys/rollbacks")
    b.add_argument("--json", action="store_true", help="print a JSON list")
    b.set_defaults(func=_bundles)

    lp = sub.add_parser("learn", help="add confirmed-good images to the active bundle's bank (new version)")
    lp.add_argument("--good", nargs="+", metavar="PATH", help="confirmed-good images or folders (as `capture` writes)")
    lp.add_argument("--from-journal", nargs="+", type=int, metavar="ROW",
                    help="decision rows whose archived images an operator confirmed as good")
    lp.add_argument("--days", type=float, default=7.0, help="preview: replay the archive of the last DAYS days (7)")
    lp.add_argument("--preview-max", type=int, default=2000, help="preview: at most this many archived images")
    lp.add_argument("--out", help="write the new version here instead of into the versions store")
    lp.add_argument("--deploy", action="store_true", help="activate the new version (as `deploy`)")
    _service_opts(lp)
    lp.set_defaults(func=_learn)
