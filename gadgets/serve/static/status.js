// mr0-inline status page: polls /api/status and draws it. Every value from the server goes in
// as text (textContent), never as HTML: job errors and chain names can hold anything.
"use strict";

const POLL_MS = 2000;
const TOKEN_KEY = "mr0-token";
let token = sessionStorage.getItem(TOKEN_KEY) || "";
const thumbs = new Map(); // preview id -> object URL

// a token in the URL fragment (#token=...) is taken once and removed from the address bar;
// fragments never reach the server or its logs
(function takeTokenFromFragment() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    token = decodeURIComponent(match[1]);
    sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

function $(id) { return document.getElementById(id); }

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return (s * 1000).toFixed(0) + " ms";
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function clock(t) {
  if (!t) return "–";
  return new Date(t * 1000).toLocaleTimeString();
}

function headers() {
  return token ? { Authorization: "Bearer " + token } : {};
}

function fill(tableId, rows, columns, rowClass) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren();
  if (!rows.length) {
    const tr = el("tr", null, "empty");
    const td = el("td", "none");
    td.colSpan = columns.length;
    tr.append(td);
    body.append(tr);
    return;
  }
  for (const row of rows) {
    const tr = el("tr");
    if (rowClass) rowClass(tr, row);
    for (const column of columns) {
      const [text, cls] = column(row);
      tr.append(el("td", text, cls));
    }
    body.append(tr);
  }
}

function tile(label, value, cls) {
  const div = el("div", null, "tile");
  div.dataset.label = label;
  div.append(el("div", value, "value " + (cls || "")), el("div", label, "label"));
  return div;
}

function meter(fraction, reservedFraction, left, right) {
  const wrap = el("div");
  const labels = el("div", null, "meter-label");
  labels.append(el("span", left), el("span", right));
  const bar = el("div", null, "meter");
  const fillBar = el("div", null, "fill");
  fillBar.style.width = (100 * Math.min(1, Math.max(0, fraction))).toFixed(1) + "%";
  bar.append(fillBar);
  if (reservedFraction > 0) {
    const res = el("div", null, "reserved");
    res.style.left = (100 * Math.min(1, fraction)).toFixed(1) + "%";
    res.style.width = (100 * Math.min(1 - Math.min(1, fraction), reservedFraction)).toFixed(1) + "%";
    bar.append(res);
  }
  wrap.append(labels, bar);
  return wrap;
}

function drawSummary(s) {
  const tiles = [];
  const mrd = s.mrd;
  tiles.push(tile("MRD sessions open", mrd.sessions_active));
  tiles.push(tile("sessions ok", mrd.sessions_ended.ok, "ok"));
  tiles.push(tile("sessions with error", mrd.sessions_ended.error + mrd.sessions_ended.crash,
                  mrd.sessions_ended.error + mrd.sessions_ended.crash ? "bad" : ""));
  tiles.push(tile("received", bytes(mrd.received_bytes)));
  tiles.push(tile("sent", bytes(mrd.sent_bytes)));
  if (s.scheduler) {
    const c = s.scheduler.counts;
    tiles.push(tile("jobs queued", c.queued, c.queued ? "warn" : ""));
    tiles.push(tile("jobs running", c.running));
    tiles.push(tile("jobs done", c.done, "ok"));
    tiles.push(tile("jobs failed", c.failed, c.failed ? "bad" : ""));
  }
  $("summary").replaceChildren(...tiles);
}

function drawGpus(s) {
  $("gpu-monitor").textContent = s.gpu_monitor === "nvml" ? "(NVML)" : "— " + s.gpu_monitor;
  const cards = s.gpus.map((g) => {
    const card = el("div", null, "gpu");
    card.dataset.device = g.device;
    const used = g.total_bytes - g.free_bytes;
    card.append(el("div", g.device + " · " + g.name, "name"));
    card.append(meter(used / g.total_bytes, g.reserved_bytes / g.total_bytes,
                      "memory " + bytes(used) + " of " + bytes(g.total_bytes),
                      g.reserved_bytes ? "reserved " + bytes(g.reserved_bytes) : ""));
    card.append(meter(g.utilization / 100, 0, "utilisation", g.utilization + " %"));
    const temp = g.temperature_c === null ? "–" : g.temperature_c + " °C";
    card.append(el("div", temp + " · " + g.processes + " processes", "muted"));
    return card;
  });
  if (!cards.length) cards.push(el("p", "No GPU: jobs run on the CPU.", "muted"));
  $("gpus").replaceChildren(...cards);
}

function drawJobs(s) {
  const sched = s.scheduler || { queued: [], running: [], recent: [], calls: [] };
  fill("queue", sched.queued, [
    (q) => [q.job], (q) => [q.kind], (q) => [seconds(q.waited_s)],
    (q) => [bytes(q.need_bytes)], (q) => [q.attempts],
  ]);
  fill("running", sched.running, [
    (r) => [r.job], (r) => [r.kind], (r) => [r.device], (r) => [seconds(r.seconds)],
    (r) => [r.attempts],
  ]);
  fill("recent", sched.recent, [
    (j) => [j.job], (j) => [j.function], (j) => [j.kind], (j) => [j.state, "state-" + j.state],
    (j) => [j.device || "–"], (j) => [seconds(j.wait_s)], (j) => [seconds(j.run_s)],
    (j) => [clock(j.finished)], (j) => [j.error, "error"],
  ], (tr, j) => { tr.dataset.job = j.job; tr.dataset.state = j.state; });
  fill("calls", sched.calls || [], [
    (c) => [c.call], (c) => [c.function], (c) => [c.kind], (c) => [c.state, "state-" + c.state],
    (c) => [c.device || "–"], (c) => [seconds(c.wait_s)], (c) => [seconds(c.run_s)],
    (c) => [clock(c.ended)], (c) => [c.error, "error"],
  ], (tr, c) => { tr.dataset.call = c.call; tr.dataset.state = c.state; });
}

function drawSessions(s) {
  fill("sessions", s.mrd.sessions, [
    (x) => [x.id], (x) => [x.peer], (x) => [x.config || "…"], (x) => [seconds(x.seconds)],
  ]);
  $("background-section").hidden = !s.background;
  if (s.background) {
    fill("background", s.background.recent, [
      (j) => [j.job.slice(0, 12)], (j) => [j.config], (j) => [j.protocol || "–"],
      (j) => [j.state, "state-" + j.state], (j) => [clock(j.created)],
      (j) => [j.finished && j.started ? seconds(j.finished - j.started) : "–"],
    ]);
  }
}

async function thumbnail(p) {
  if (thumbs.has(p.id)) return thumbs.get(p.id);
  const response = await fetch(p.url, { headers: headers() });
  if (!response.ok) return null;
  const url = URL.createObjectURL(await response.blob());
  thumbs.set(p.id, url);
  return url;
}

async function drawPreviews(s) {
  const figures = [];
  for (const p of s.previews) {
    const fig = el("figure");
    fig.dataset.preview = p.id;
    const img = el("img");
    img.alt = p.config + " series " + p.series;
    const url = await thumbnail(p);
    if (url) img.src = url;
    const caption = [p.config, "series " + p.series, p.title, p.images + " image(s)",
                     p.matrix.join("×"), clock(p.time)].filter(Boolean).join(" · ");
    fig.append(img, el("figcaption", caption));
    figures.push(fig);
  }
  const keep = new Set(s.previews.map((p) => p.id));
  for (const [id, url] of thumbs) {
    if (!keep.has(id)) { URL.revokeObjectURL(url); thumbs.delete(id); }
  }
  if (!figures.length) figures.push(el("p", "No images sent yet.", "muted"));
  $("previews").replaceChildren(...figures);
}

async function poll() {
  try {
    const response = await fetch("/api/status", { headers: headers(), cache: "no-store" });
    if (response.status === 401) {
      $("token-form").hidden = false;
      $("token-error").textContent = token ? "that token was refused" : "";
      $("updated").textContent = "needs a token";
      return;
    }
    if (!response.ok) throw new Error("HTTP " + response.status);
    const s = await response.json();
    $("token-form").hidden = true;
    $("address").textContent = "MRD " + (s.mrd.address || "–") + " · up " + seconds(s.uptime_s);
    drawSummary(s);
    drawGpus(s);
    drawJobs(s);
    drawSessions(s);
    await drawPreviews(s);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    $("updated").className = "muted";
    document.body.dataset.loaded = "true";
  } catch (err) {
    $("updated").textContent = "no answer from the server (" + err.message + ")";
    $("updated").className = "bad";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  for (const url of thumbs.values()) URL.revokeObjectURL(url);
  thumbs.clear();
});

poll();
