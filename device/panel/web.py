"""The panel's web app (Starlette, Jinja2 templates, assets served from the package).

Pages: ``/`` live, ``/trends``, ``/rejects`` (gallery) and ``/decision/<id>`` (detail), ``/actions``
(login required), ``/login``; archived pictures: ``/image/<id>`` (the clean frame) and
``/image/<id>/overlay`` (a tiled bundle's score overlay beside it); JSON: ``/api/live``,
``/api/actions/<id>``; ``/metrics`` (Prometheus); ``/healthz``. Every state-changing request is a
POST carrying the session's CSRF token; actions need a login and, when the page is open to the LAN
with ``lan_readonly``, a client on this machine.

Example:
    >>> app = create_app(service)          # doctest: +SKIP
"""
from __future__ import annotations

import functools
import logging
import math
import time
import urllib.parse
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from device.panel import charts
from device.panel.actions import (Busy, deploy_argv, learn_argv, learned_version, rollback_argv, threshold_argv,
                                  threshold_preview)
from device.panel.auth import same_token
from device.panel.reader import NON_PASS, JournalMissing
from device.panel.settings import is_loopback

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
COOKIE = "anomaly_panel_session"
PRE_COOKIE = "anomaly_panel_login_csrf"
GALLERY_KINDS = {"rejects": NON_PASS, "reject": ("REJECT",), "error": ("ERROR",), "pass": ("PASS",),
                 "all": ("PASS", "REJECT", "ERROR")}
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; "
       "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


class SecurityHeaders:
    """ASGI middleware: CSP, no sniffing, no framing, no referrer, no caching of pages."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        static = scope["path"].startswith(("/static/", "/image/"))

        async def send_headers(message):
            if message["type"] == "http.response.start":
                h = list(message.get("headers", []))
                h += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                      (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]
                if not static:
                    h.append((b"cache-control", b"no-store"))
                message["headers"] = h
            await send(message)

        await self.app(scope, receive, send_headers)


# ----------------------------------------------------------------------------- formatting
def fmt_time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "–"


def fmt_num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def parse_local(value: str | None) -> float | None:
    """``YYYY-MM-DDTHH:MM`` (an ``<input type=datetime-local>``) as Unix time; None when empty/bad."""
    if not value:
        return None
    for fmt in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            return time.mktime(time.strptime(value, fmt))
        except ValueError:
            continue
    return None


def _int(v: str | None, default: int | None = None, lo: int = 0, hi: int = 2 ** 62) -> int | None:
    try:
        return min(hi, max(lo, int(v))) if v not in (None, "") else default
    except ValueError:
        return default


class PanelWeb:
    """The pages and forms of a :class:`~device.panel.service.PanelService` (one handler per route)."""

    def __init__(self, svc):
        self.svc, self.cfg = svc, svc.cfg
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters.update(time=fmt_time, num=fmt_num,
                                          pct=lambda v: "–" if v is None else f"{100 * v:.2f} %",
                                          ms=lambda v: "–" if v is None else f"{v:.2f} ms")

    # ------------------------------------------------------------------ helpers
    def client(self, request: Request) -> str:
        return request.client.host if request.client else ""

    def may_act(self, request: Request) -> bool:
        return not (self.svc.lan_open and self.cfg.panel.lan_readonly and not is_loopback(self.client(request)))

    def session(self, request: Request) -> dict | None:
        s = self.svc.store.session(request.cookies.get(COOKIE))
        return s if s and self.may_act(request) else None

    def page(self, request: Request, name: str, status: int = 200, **ctx) -> Response:
        s = self.session(request)
        ctx.update(user=s["user"] if s else None, csrf=s["csrf"] if s else "", may_act=self.may_act(request),
                   refresh_ms=int(self.cfg.panel.refresh_s * 1000), station=self.cfg.mqtt.station,
                   line=self.cfg.mqtt.line, path=request.url.path)
        return self.templates.TemplateResponse(request, name, ctx, status_code=status)

    def journal_missing(self, request: Request, exc: Exception) -> Response:
        return self.page(request, "message.html", 503, title="No journal yet", message=str(exc))

    async def authorized_form(self, request: Request) -> tuple[dict | None, Any, Response | None]:
        """The session and the form of a state-changing POST, or the refusal to send."""
        form = await request.form()
        if not self.may_act(request):
            return None, form, PlainTextResponse("actions are allowed from this machine only "
                                                 "([panel] lan_readonly)", 403)
        s = self.session(request)
        if s is None:
            return None, form, PlainTextResponse("login required", 401)
        if not same_token(form.get("csrf"), s["csrf"]):
            self.svc.store.record(s["user"], "csrf_refused", {"path": request.url.path}, status="refused",
                                  client=self.client(request))
            return None, form, PlainTextResponse("CSRF token missing or wrong; reload the page", 403)
        return s, form, None

    # ------------------------------------------------------------------ read-only pages
    def live(self, request: Request) -> Response:
        try:
            data = self.svc.live()
        except JournalMissing as exc:       # the journal vanished between two queries
            return self.journal_missing(request, exc)
        return self.page(request, "live.html", live=data)

    def api_live(self, request: Request) -> Response:
        try:
            return JSONResponse(self.svc.live())
        except JournalMissing as exc:
            return JSONResponse({"journal": str(exc)}, 503)

    def trends(self, request: Request) -> Response:
        hours = _int(request.query_params.get("hours"), 24, 1, 24 * 31)
        now = time.time()
        since = now - hours * 3600
        try:
            pts = self.svc.reader.points(since, 1500)
            buckets = [] if len(pts) < 1500 else self.svc.reader.series(since, trend_bucket(hours))
            if buckets:
                pts = []
            hourly = self.svc.reader.series(since, 3600.0)
            recent = self.svc.reader.pass_scores(2000)
            last = self.svc.reader.last_decision()
        except JournalMissing as exc:
            return self.journal_missing(request, exc)
        thr = last["threshold"] if last else None
        return self.page(request, "trends.html", hours=hours,
                         score_svg=charts.score_chart(pts, buckets, thr, (since, now)),
                         rate_svg=charts.reject_rate_chart(hourly, (since, now + 3600 - now % 3600)),
                         hist_svg=charts.histogram_chart(recent, self.svc.calibration_scores(), thr))

    def rejects(self, request: Request) -> Response:
        q = request.query_params
        kind = q.get("decision", "rejects")
        kind = kind if kind in GALLERY_KINDS else "rejects"
        since, until = parse_local(q.get("since")), parse_local(q.get("until"))
        before = _int(q.get("before"), None, 1)
        try:
            rows = self.svc.reader.gallery(GALLERY_KINDS[kind], since, until, before, self.cfg.panel.gallery_page)
        except JournalMissing as exc:
            return self.journal_missing(request, exc)
        marks = self.svc.store.marks(ids=[r["id"] for r in rows])
        keep = {k: v for k, v in q.items() if k in ("decision", "since", "until") and v}
        older = (f"/rejects?{urllib.parse.urlencode({**keep, 'before': rows[-1]['id']})}"
                 if len(rows) == self.cfg.panel.gallery_page else None)
        return self.page(request, "rejects.html", rows=rows, marks=marks, kind=kind, kinds=list(GALLERY_KINDS),
                         since=q.get("since", ""), until=q.get("until", ""), older=older)

    def detail(self, request: Request) -> Response:
        rid = request.path_params["id"]
        try:
            row = self.svc.reader.decision(rid)
            cols = self.svc.reader.columns()
        except JournalMissing as exc:
            return self.journal_missing(request, exc)
        if row is None:
            return self.page(request, "message.html", 404, title="Not found",
                             message=f"no decision {rid} in the journal")
        mark = self.svc.store.marks(ids=[rid]).get(rid)
        has_image = self.svc.image_path(row) is not None
        return self.page(request, "detail.html", row=row, mark=mark, has_image=has_image,
                         has_overlay=has_image and self.svc.image_path(row, overlay=True) is not None,
                         has_digest="bundle_digest" in cols, configured_digest=self.svc.bundle_digest(),
                         stages=[s for s in ("capture_ms", "preprocess_ms", "inference_ms", "knn_ms", "decision_ms")
                         if s in row])

    def image(self, request: Request, overlay: bool = False) -> Response:
        """The archived clean frame of a decision, or (``overlay``) its score-overlay picture."""
        try:
            row = self.svc.reader.decision(request.path_params["id"])
        except JournalMissing:
            row = None
        p = self.svc.image_path(row, overlay) if row else None
        if p is None:
            return PlainTextResponse(f"no archived {'overlay' if overlay else 'image'} for this decision", 404)
        return FileResponse(p, media_type="image/png", headers={"cache-control": "private, max-age=3600"})

    def metrics(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        try:
            return Response(generate_latest(self.svc.registry), media_type=CONTENT_TYPE_LATEST)
        except JournalMissing as exc:
            return PlainTextResponse(f"# {exc}\n", 503)

    def healthz(self, request: Request) -> Response:
        st = self.svc.status_fields()
        return JSONResponse({"ok": "journal" not in st, "service": st.get("service"),
                             "mqtt": self.svc.publisher.info() if self.svc.publisher else None})

    # ------------------------------------------------------------------ login
    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            import secrets

            token = secrets.token_urlsafe(24)
            resp = self.page(request, "login.html", login_csrf=token, next=request.query_params.get("next", "/actions"))
            resp.set_cookie(PRE_COOKIE, token, httponly=True, samesite="strict", secure=self.cfg.panel.cookie_secure,
                            max_age=3600, path="/login")
            return resp
        form = await request.form()
        ip = self.client(request)
        if not self.may_act(request):
            return PlainTextResponse("login is allowed from this machine only ([panel] lan_readonly)", 403)
        if not same_token(form.get("csrf"), request.cookies.get(PRE_COOKIE)):
            return PlainTextResponse("CSRF token missing or wrong; reload the login page", 403)
        name = str(form.get("username", ""))[:64]
        wait = self.svc.limiter.retry_after(f"ip:{ip}", f"user:{name}")
        if wait > 0:
            self.svc.store.record(name, "login_refused", {"retry_after_s": round(wait)}, status="refused", client=ip)
            return PlainTextResponse(f"too many failed logins; try again in {math.ceil(wait)} s", 429,
                                     headers={"retry-after": str(math.ceil(wait))})
        ok = await run_in_threadpool(self.svc.store.check_password, name, str(form.get("password", "")))
        if not ok:
            self.svc.limiter.failure(f"ip:{ip}", f"user:{name}")
            self.svc.store.record(name, "login_failed", {}, status="refused", client=ip)
            return self.page(request, "login.html", 401, login_csrf=form.get("csrf"), next=form.get("next", "/actions"),
                             error="wrong user name or password")
        self.svc.limiter.reset(f"ip:{ip}", f"user:{name}")
        token, _ = self.svc.store.create_session(name, self.cfg.panel.session_hours, ip)
        self.svc.store.record(name, "login", {}, client=ip)
        nxt = str(form.get("next", "/actions"))
        nxt = nxt if nxt.startswith("/") and not nxt.startswith("//") else "/actions"
        resp = RedirectResponse(nxt, 303)
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=self.cfg.panel.cookie_secure,
                        max_age=int(self.cfg.panel.session_hours * 3600), path="/")
        resp.delete_cookie(PRE_COOKIE, path="/login")
        return resp

    async def logout(self, request: Request) -> Response:
        s, _, refused = await self.authorized_form(request)
        if refused:
            return refused
        self.svc.store.end_session(request.cookies.get(COOKIE))
        self.svc.store.record(s["user"], "logout", {}, client=self.client(request))
        resp = RedirectResponse("/", 303)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    # ------------------------------------------------------------------ actions
    def actions_page(self, request: Request, preview: dict | None = None, error: str | None = None,
                     status: int = 200) -> Response:
        if self.session(request) is None:
            return RedirectResponse("/login?next=/actions", 303)
        good, defect = self.svc.store.marks("good"), self.svc.store.marks("defect")
        try:
            rows = self.svc.reader.decisions_by_id(list(good) + list(defect))
        except JournalMissing:
            rows = {}
        return self.page(request, "actions.html", status, good=good, defect=defect, rows=rows, preview=preview,
                         error=error, audit=self.svc.store.actions(40), busy=self.svc.runner.busy(),
                         available=self.svc.runner.available(), last_learn=_last_learned_bundle(self.svc),
                         learned=_learned_rows(self.svc))

    async def mark(self, request: Request) -> Response:
        s, form, refused = await self.authorized_form(request)
        if refused:
            return refused
        rid = request.path_params["id"]
        kind = form.get("kind")
        if kind not in ("good", "defect", "clear"):
            return PlainTextResponse("kind must be good, defect or clear", 400)
        if self.svc.reader.decision(rid) is None:
            return PlainTextResponse(f"no decision {rid}", 404)
        self.svc.store.set_mark(rid, None if kind == "clear" else kind, s["user"], str(form.get("note", ""))[:500])
        self.svc.store.record(s["user"], "unmark" if kind == "clear" else "mark", {"decision": rid, "kind": kind},
                              client=self.client(request))
        return RedirectResponse(f"/decision/{rid}", 303)

    async def start_action(self, request: Request, action: str, build) -> Response:
        s, form, refused = await self.authorized_form(request)
        if refused:
            return refused
        try:
            args, detail = build(form)
        except ValueError as exc:
            return self.actions_page(request, error=str(exc), status=400)
        try:
            aid = self.svc.runner.start(s["user"], action, args, detail, client=self.client(request))
        except Busy as exc:
            return self.actions_page(request, error=str(exc), status=409)
        return RedirectResponse(f"/actions/run/{aid}", 303)

    def build_learn(self, form):
        learned = _learned_rows(self.svc)
        ids = sorted(set(self.svc.store.marks("good")) - set(learned))
        if not ids:
            raise ValueError("no part marked good is left to learn (each was learned into a version already)"
                             if learned else "no decision is marked as a good part yet")
        return learn_argv(self.svc.runner.config_path, ids), {"rows": ids}

    def build_deploy(self, form):
        bundle = str(form.get("bundle", "")).strip()
        if not bundle or bundle.startswith("-"):
            raise ValueError("give the bundle (version) folder to deploy")
        return deploy_argv(self.svc.runner.config_path, bundle), {"bundle": bundle}

    def build_rollback(self, form):
        return rollback_argv(self.svc.runner.config_path), {}

    def build_threshold(self, form):
        frr = _frr(form.get("target_frr"))
        return threshold_argv(self.svc.runner.config_path, frr), {"target_frr": frr}

    async def preview(self, request: Request) -> Response:
        s, form, refused = await self.authorized_form(request)
        if refused:
            return refused
        try:
            frr = _frr(form.get("target_frr"))
            pv = await run_in_threadpool(threshold_preview, self.svc.reader, self.cfg.device.bundle.path, frr,
                                         self.cfg.panel.preview_decisions)
        except (ValueError, JournalMissing) as exc:
            return self.actions_page(request, error=str(exc), status=400)
        except Exception as exc:   # bundle missing or invalid: say so
            return self.actions_page(request, error=f"{type(exc).__name__}: {exc}", status=400)
        return self.actions_page(request, preview=pv)

    def run_page(self, request: Request) -> Response:
        if self.session(request) is None:
            return RedirectResponse("/login?next=/actions", 303)
        a = self.svc.store.action(request.path_params["id"])
        if a is None:
            return self.page(request, "message.html", 404, title="Not found", message="no such action")
        version = learned_version(a.get("output") or "") if a["action"] == "learn" and a["status"] == "ok" else None
        return self.page(request, "run.html", a=a, version=version)

    def api_action(self, request: Request) -> Response:
        if self.session(request) is None:
            return JSONResponse({"error": "login required"}, 401)
        a = self.svc.store.action(request.path_params["id"])
        return JSONResponse(a) if a else JSONResponse({"error": "not found"}, 404)

    def routes(self) -> list:
        builds = (("learn", self.build_learn), ("deploy", self.build_deploy), ("rollback", self.build_rollback),
                  ("threshold", self.build_threshold))
        return [
            Route("/", self.live), Route("/api/live", self.api_live), Route("/trends", self.trends),
            Route("/rejects", self.rejects), Route("/decision/{id:int}", self.detail),
            Route("/image/{id:int}", self.image),
            Route("/image/{id:int}/overlay", functools.partial(self.image, overlay=True)),
            Route("/metrics", self.metrics), Route("/healthz", self.healthz),
            Route("/login", self.login, methods=["GET", "POST"]), Route("/logout", self.logout, methods=["POST"]),
            Route("/actions", self.actions_page), Route("/decision/{id:int}/mark", self.mark, methods=["POST"]),
            *[Route(f"/actions/{name}", functools.partial(self.start_action, action=name, build=build),
                    methods=["POST"]) for name, build in builds],
            Route("/actions/threshold/preview", self.preview, methods=["POST"]),
            Route("/actions/run/{id:int}", self.run_page), Route("/api/actions/{id:int}", self.api_action),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ]


def create_app(svc) -> Starlette:
    """The ASGI app of a :class:`~device.panel.service.PanelService`."""
    app = Starlette(routes=PanelWeb(svc).routes())
    app.add_middleware(SecurityHeaders)
    return app


BUCKETS_S = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def trend_bucket(hours: int, points: int = 300) -> float:
    """Bucket of the score chart: the smallest of a fixed ladder giving at most ``points`` buckets
    (fixed sizes, so the reader's bucket cache serves every request).

    Example:
        >>> trend_bucket(24), trend_bucket(168)
        (300.0, 3600.0)
    """
    want = hours * 3600 / points
    return float(next((b for b in BUCKETS_S if b >= want), BUCKETS_S[-1]))


def _frr(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"target false-reject rate must be a number, found {value!r}") from None
    if not (math.isfinite(v) and 0.0 <= v < 1.0):
        raise ValueError(f"target false-reject rate must be in [0, 1), found {value!r}")
    return v


def _learned_rows(svc) -> dict[int, str]:
    """Journal rows already learned by a successful ``learn``, with the version it wrote."""
    out: dict[int, str] = {}
    for a in reversed(svc.store.actions(1000, ("learn",))):
        if a["status"] == "ok":
            version = learned_version(a.get("output") or "") or "?"
            out.update({int(r): version for r in a["detail"].get("rows", [])})
    return out


def _last_learned_bundle(svc) -> str | None:
    """The version the last successful ``learn`` wrote (offered for deployment)."""
    for a in svc.store.actions(20, ("learn",)):
        if a["status"] == "ok":
            return learned_version(a.get("output") or "")
    return None
