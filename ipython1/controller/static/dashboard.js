// ipython1 dashboard: polls /api/status, follows /api/events (server-sent events).
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
const q = "?token=" + encodeURIComponent(token);
const palette = ["#3b6fd8", "#e0842b", "#3aa55d", "#b8405e", "#7d5cc6", "#2aa3a3", "#a67c1e"];
const userColour = {};
let access = {kind: "observer"};
let lastStatus = null;

function colourOf(user) {
  if (!(user in userColour)) userColour[user] = palette[Object.keys(userColour).length % palette.length];
  return userColour[user];
}
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function fmtBytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB"]; let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}
function fmtSecs(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor(s % 3600 / 60) + " min";
}
function showError(text) {
  const e = document.getElementById("error");
  e.textContent = text; e.hidden = !text;
}

async function interrupt(engine) {
  const r = await fetch("api/interrupt" + q, {method: "POST", body: JSON.stringify({engine})});
  if (!r.ok) showError((await r.json()).error || "interrupt failed");
}

function renderEngines(s) {
  const body = document.getElementById("engine-rows");
  body.replaceChildren();
  for (const e of s.engines) {
    const tr = el("tr", null, e.state);
    tr.dataset.engine = e.id;
    const id = e.mpi_rank === null || e.mpi_rank === undefined ? e.id : e.id + " (rank " + e.mpi_rank + ")";
    tr.append(el("td", id), el("td", e.host), el("td", e.pid), el("td", e.state, "state"),
      el("td", e.cpu === null || e.cpu === undefined ? "-" : e.cpu.toFixed(0)), el("td", fmtBytes(e.rss)),
      el("td", e.queued));
    const run = e.running;
    const code = el("td", run ? run.op + ": " + run.description + " (" + run.user + ")" : "", "code");
    if (run) code.title = run.description;
    tr.append(code, el("td", run ? fmtSecs(run.elapsed) : ""), el("td", e.transport));
    const act = el("td");
    if (access.kind !== "observer" && run) {
      const b = el("button", "interrupt", "act");
      b.addEventListener("click", () => interrupt(e.id));
      act.append(b);
    }
    tr.append(act);
    body.append(tr);
  }
  document.getElementById("n-engines").textContent = "(" + s.engines.length + ")";
}

function renderTasks(s) {
  const t = s.tasks;
  const summary = document.getElementById("task-summary");
  const rows = document.getElementById("task-rows");
  rows.replaceChildren();
  if (!t) { summary.textContent = "No task farm."; return; }
  const total = t.queued + t.running + t.done + t.failed;
  summary.textContent = `${t.done} done, ${t.failed} failed, ${t.running} running, ${t.queued} queued` +
    (total ? ` (${Math.round(100 * (t.done + t.failed) / total)}% finished)` : "");
  document.getElementById("task-done").style.width = total ? (100 * t.done / total) + "%" : "0";
  document.getElementById("task-failed").style.width = total ? (100 * t.failed / total) + "%" : "0";
  const engines = new Set([...Object.keys(t.running_per_engine), ...Object.keys(t.batches_per_engine)]);
  for (const e of [...engines].sort((a, b) => a - b)) {
    const tr = el("tr");
    tr.append(el("td", e), el("td", t.running_per_engine[e] || 0), el("td", t.batches_per_engine[e] || 0));
    rows.append(tr);
  }
}

function renderUsers(s) {
  const rows = document.getElementById("user-rows");
  rows.replaceChildren();
  for (const u of s.users) {
    const tr = el("tr");
    const clients = u.clients.map(c => c.client + (c.host ? " @ " + c.host + " pid " + c.pid : "")).join(", ");
    tr.append(el("td", u.name), el("td", u.kind), el("td", u.connected), el("td", u.queued), el("td", clients));
    rows.append(tr);
  }
}

function plotLoad(s) {
  const c = document.getElementById("load"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const load = s.load;
  if (!load.length) return;
  const t1 = load[load.length - 1].time, t0 = t1 - 600;
  const max = Math.max(1, ...load.map(p => Math.max(p.busy, p.queued, p.engines)));
  const x = t => 30 + (c.width - 40) * (t - t0) / 600, y = v => c.height - 18 - (c.height - 30) * v / max;
  g.strokeStyle = "#c9d0d8"; g.beginPath(); g.moveTo(30, y(0)); g.lineTo(c.width - 10, y(0)); g.stroke();
  g.fillStyle = "#58606b"; g.font = "11px sans-serif";
  g.fillText(String(max), 4, y(max) + 4); g.fillText("0", 18, y(0) + 4);
  for (const [key, colour] of [["busy", "#e0842b"], ["queued", "#3b6fd8"]]) {
    g.strokeStyle = colour; g.lineWidth = 1.5; g.beginPath();
    load.forEach((p, i) => (i ? g.lineTo : g.moveTo).call(g, x(p.time), y(p[key])));
    g.stroke();
  }
  g.fillStyle = "#e0842b"; g.fillText("busy", c.width - 90, 12);
  g.fillStyle = "#3b6fd8"; g.fillText("queued", c.width - 55, 12);
}

function plotTimeline(s) {
  const c = document.getElementById("timeline"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const ids = s.engines.map(e => e.id);
  if (!ids.length) return;
  const row = Math.max(2, Math.min(18, (c.height - 14) / ids.length));
  const t1 = s.time, t0 = t1 - 120;
  const x = t => 34 + (c.width - 40) * Math.max(0, t - t0) / 120;
  const index = Object.fromEntries(ids.map((id, i) => [id, i]));
  g.font = "10px sans-serif"; g.fillStyle = "#58606b";
  if (row >= 9) ids.forEach((id, i) => g.fillText(String(id), 4, 10 + i * row + row / 2));
  const bar = (engine, start, end, user, failed) => {
    if (!(engine in index) || end < t0) return;
    g.fillStyle = failed ? "#e53935" : colourOf(user);
    g.fillRect(x(start), 4 + index[engine] * row, Math.max(1.5, x(end) - x(start)), row - 1);
  };
  for (const t of s.timeline) bar(t.engine, t.start, t.end, t.user, !t.ok);
  for (const e of s.engines) if (e.running) bar(e.id, e.running.since, t1, e.running.user, false);
}

async function refresh() {
  try {
    const r = await fetch("api/status" + q, {cache: "no-store"});
    const s = await r.json();
    if (!r.ok) { showError(s.error || ("HTTP " + r.status)); return; }
    showError("");
    lastStatus = s; access = s.access;
    const c = s.controller;
    document.getElementById("cluster").textContent =
      `profile ${c.profile} on ${c.host} (pid ${c.pid}), up ${fmtSecs(c.uptime)}, ipython1 ${c.ipython1}`;
    const badge = document.getElementById("access");
    badge.textContent = access.user + " (" + (access.kind === "observer" ? "read-only" : access.kind) + ")";
    renderEngines(s); renderTasks(s); renderUsers(s); plotLoad(s); plotTimeline(s);
  } catch (err) {
    showError("cannot reach the controller: " + err);
  }
}

function describe(ev) {
  const d = ev.data || {};
  const who = ev.user ? ev.user + " " : "";
  const where = ev.engine === null || ev.engine === undefined ? "" : " on " + ev.engine;
  switch (ev.kind) {
    case "queued": return `${who}queued ${d.op || ""} ${d.code || d.description || ""}`.trim() + (d.targets ? " on " + d.targets : "");
    case "started": return `${who}${d.op || "command"} started${where}`;
    case "stdout": case "stderr": return `[${ev.engine}] ${ev.kind}: ${(d.text || "").trimEnd()}`;
    case "result": return `${who}result${where}` + (d.repr ? ": " + d.repr : "");
    case "error": return `${who}error${where}: ${d.ename || ""}: ${d.evalue || ""}`;
    default: return `${who}${ev.kind}${where} ${Object.keys(d).length ? JSON.stringify(d) : ""}`;
  }
}

function follow() {
  const list = document.getElementById("event-list");
  const live = document.getElementById("live");
  const source = new EventSource("api/events" + q);
  source.onopen = () => { live.textContent = "events: live"; live.className = "badge on"; };
  source.onerror = () => { live.textContent = "events: reconnecting"; live.className = "badge off"; };
  source.onmessage = (m) => {
    for (const ev of JSON.parse(m.data)) {
      const li = el("li", new Date(ev.time * 1000).toLocaleTimeString() + "  " + describe(ev),
        ev.kind === "error" ? "error" : ev.kind);
      li.value = ev.seq;
      li.dataset.kind = ev.kind;
      list.append(li);
      while (list.children.length > 1000) list.firstChild.remove();
    }
    list.scrollTop = list.scrollHeight;
  };
}

for (const b of document.querySelectorAll("nav button")) {
  b.addEventListener("click", () => {
    for (const x of document.querySelectorAll("nav button, .tab")) x.classList.remove("active");
    b.classList.add("active");
    document.getElementById(b.dataset.tab).classList.add("active");
  });
}
refresh();
setInterval(refresh, 2000);
follow();
