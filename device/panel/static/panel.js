// Operator panel: live refresh of the page from /api/live, and progress of a running action.
// Served from the package (no CDN); no inline script (the page's CSP forbids it).
"use strict";
(function () {
  function get(obj, path) {
    return path.split(".").reduce(function (o, k) { return o == null ? undefined : o[k]; }, obj);
  }
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function fmtTime(ts) {
    if (!ts) { return "–"; }
    var d = new Date(ts * 1000);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  var FMT = {
    pct: function (v) { return v == null ? "–" : (100 * v).toFixed(2) + " %"; },
    num: function (v) { return v == null ? "–" : Number(v).toPrecision(4).replace(/\.?0+$/, ""); },
    ms: function (v) { return v == null ? "–" : Number(v).toFixed(2) + " ms"; },
    fps: function (v) { return v == null ? "–" : Number(v).toFixed(2); },
    time: fmtTime,
    onoff: function (v) { return v ? "ON" : "off"; },
    conn: function (v) { return v ? "connected" : "disconnected"; },
    list: function (v) { return v && v.length ? v.join(", ") : ""; },
    text: function (v) { return v == null ? "" : String(v); },
    digest: function (v) { return v ? String(v).slice(0, 12) : ""; }
  };
  var BADGE_STATE = { "service-state": 1, "camera-state": 1, "drift-state": 1 };

  function svgEl(name, attrs) {
    var el = document.createElementNS("http://www.w3.org/2000/svg", name);
    Object.keys(attrs).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    return el;
  }

  function drawOverlay(svg, grid, threshold) {
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    if (!grid || !grid.length || !grid[0].length) { return; }
    var rows = grid.length, cols = grid[0].length, worst = -Infinity;
    grid.forEach(function (r) { r.forEach(function (v) { worst = Math.max(worst, v); }); });
    svg.setAttribute("viewBox", "0 0 " + cols + " " + rows);
    grid.forEach(function (r, i) {
      r.forEach(function (v, j) {
        var ratio = threshold ? v / threshold : 0;
        svg.appendChild(svgEl("rect", {
          x: j, y: i, width: 1, height: 1, fill: ratio > 1 ? "#e53935" : "#43a047",
          "fill-opacity": Math.min(0.55, Math.max(0.05, ratio * 0.35)).toFixed(2),
          stroke: v === worst ? "#ffeb3b" : "none", "stroke-width": v === worst ? 0.06 : 0
        }));
      });
    });
  }

  function applyLive(data) {
    document.querySelectorAll("[data-live]").forEach(function (el) {
      var v = get(data, el.getAttribute("data-live"));
      var f = FMT[el.getAttribute("data-fmt")];
      var text = f ? f(v) : (v == null ? "–" : String(v));
      if (el.textContent !== text) { el.textContent = text; }
      if (BADGE_STATE[el.id]) { el.className = "badge s-" + v; }
    });
    var imd = document.getElementById("last-image-decision");
    if (imd && data.last_image) { imd.className = "badge d-" + data.last_image.decision; }
    var alarm = document.getElementById("alarm-state");
    if (alarm && data.state) { alarm.className = "badge s-" + (data.state.alarm ? "alarm" : "ok"); }
    var last = data.last;
    var dec = document.getElementById("last-decision");
    if (dec) { dec.className = "badge d-" + (last ? last.decision : "none"); }
    var fill = document.getElementById("scorebar-fill"), thr = document.getElementById("scorebar-thr");
    if (fill && last && last.threshold) {
      var full = Math.max(2 * last.threshold, last.score || 0) || 1;
      fill.setAttribute("width", (200 * Math.min(1, (last.score || 0) / full)).toFixed(1));
      fill.setAttribute("fill", last.decision === "PASS" ? "#2e7d32" : "#c62828");
      var x = (200 * last.threshold / full).toFixed(1);
      thr.setAttribute("x1", x); thr.setAttribute("x2", x);
    }
    var im = data.last_image, wrap = document.getElementById("last-image-wrap");
    if (wrap && im && wrap.getAttribute("data-id") !== String(im.id)) {
      wrap.setAttribute("data-id", String(im.id));
      document.getElementById("last-image").src = "/image/" + im.id;
      document.getElementById("last-image-link").href = "/decision/" + im.id;
      drawOverlay(document.getElementById("last-overlay"), im.tile_grid, im.threshold);
      var ow = document.getElementById("last-overlay-wrap");
      if (ow) {
        ow.hidden = !im.overlay;
        document.getElementById("last-overlay-image").src = im.overlay ? "/image/" + im.id + "/overlay" : "/static/none.svg";
      }
    }
    var ev = document.getElementById("events");
    if (ev && data.events) {
      while (ev.firstChild) { ev.removeChild(ev.firstChild); }
      data.events.forEach(function (e) {
        var li = document.createElement("li"), t = document.createElement("span"), k = document.createElement("b");
        t.className = "muted"; t.textContent = fmtTime(e.ts) + " "; k.textContent = e.kind;
        li.appendChild(t); li.appendChild(k); li.appendChild(document.createTextNode(" " + (e.message || "")));
        ev.appendChild(li);
      });
    }
    var missing = document.getElementById("journal-missing");
    if (missing) { missing.hidden = !data.journal; }
    document.body.setAttribute("data-last-id", last ? String(last.id) : "0");
    document.body.setAttribute("data-polls", String(Number(document.body.getAttribute("data-polls") || 0) + 1));
  }

  function pollLive(every) {
    fetch("/api/live", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data && data.counts) { applyLive(data); } })
      .catch(function () { /* the panel restarts: keep polling */ })
      .then(function () { setTimeout(function () { pollLive(every); }, every); });
  }

  function pollAction(box) {
    var id = box.getAttribute("data-action-id");
    fetch("/api/actions/" + id, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (a) {
        if (!a) { return; }
        document.getElementById("run-output").textContent = a.output || "";
        var st = document.getElementById("run-status");
        st.textContent = a.status; st.className = "badge st-" + a.status;
        box.setAttribute("data-status", a.status);
        if (a.status === "running") { setTimeout(function () { pollAction(box); }, 700); }
        else { window.location.reload(); }   // the finished page offers what comes next (e.g. deploy)
      })
      .catch(function () { setTimeout(function () { pollAction(box); }, 2000); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var every = Number(document.body.getAttribute("data-refresh-ms")) || 1000;
    var initial = document.getElementById("live-data");
    if (initial) {
      var data = JSON.parse(initial.textContent);
      if (data.last_image) {
        drawOverlay(document.getElementById("last-overlay"), data.last_image.tile_grid, data.last_image.threshold);
      }
      if (data.counts) { applyLive(data); }
      setTimeout(function () { pollLive(every); }, every);
    }
    var run = document.getElementById("run");
    if (run && run.getAttribute("data-status") === "running") { pollAction(run); }
  });
})();
