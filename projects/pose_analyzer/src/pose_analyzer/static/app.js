// Live page of pose_analyzer: a card per stream (video + skeleton, angles, the
// athletes' rep totals, score, fault cues), start/stop controls and a session history.
// Bystanders are drawn grey and never add to a card's reps; a stream that ended keeps
// its card with the session summary until dismissed. Four cards lay out as 2x2.
"use strict";

const params = new URLSearchParams(location.search);
const apiKey = params.get("api_key");
const JOINTS = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
  "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
  "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel",
  "right_heel", "left_foot_index", "right_foot_index"];
const J = Object.fromEntries(JOINTS.map((n, i) => [n, i]));
const BONES = [["left_shoulder", "right_shoulder"], ["left_hip", "right_hip"],
  ["left_shoulder", "left_hip"], ["right_shoulder", "right_hip"],
  ["left_shoulder", "left_elbow"], ["left_elbow", "left_wrist"],
  ["right_shoulder", "right_elbow"], ["right_elbow", "right_wrist"],
  ["left_hip", "left_knee"], ["left_knee", "left_ankle"], ["right_hip", "right_knee"],
  ["right_knee", "right_ankle"], ["left_ankle", "left_heel"], ["left_heel", "left_foot_index"],
  ["right_ankle", "right_heel"], ["right_heel", "right_foot_index"], ["nose", "left_eye"],
  ["nose", "right_eye"], ["left_eye", "left_ear"], ["right_eye", "right_ear"]];
const COLORS = ["#58a6ff", "#f778ba", "#3fb950", "#d29922", "#a371f7", "#39c5cf"];

const cards = new Map(); // stream id -> {el, ws, image, last, athletes, ended}
const BYSTANDER = "#6e7681";

function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (apiKey) headers["X-API-Key"] = apiKey;
  return fetch(path, Object.assign({}, options, { headers })).then(async (r) => {
    const body = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
    if (!r.ok) throw new Error(body && body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)) : r.statusText);
    return body;
  });
}

function wsUrl(id, frames) {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const q = new URLSearchParams();
  if (frames) q.set("frames", "true");
  if (apiKey) q.set("api_key", apiKey);
  return `${proto}://${location.host}/ws/streams/${id}?${q}`;
}

function fmt(v, digits = 0) {
  return v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(digits);
}

function makeCard(stream) {
  const node = document.getElementById("card-template").content.firstElementChild.cloneNode(true);
  node.dataset.stream = stream.id;
  node.querySelector(".title").textContent = `${stream.exercise} · ${stream.source}`;
  const card = { el: node, ws: null, image: null, last: null, stream, athletes: {}, ended: false };
  node.querySelector(".stop").addEventListener("click", () => (card.ended ? dismiss(stream.id) : stopStream(stream.id)));
  document.getElementById("grid").appendChild(node);
  cards.set(stream.id, card);
  layout();
  connect(card);
  return card;
}

function connect(card) {
  const frames = document.getElementById("f-frames").checked;
  const ws = new WebSocket(wsUrl(card.stream.id, frames));
  card.ws = ws;
  ws.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    for (const a of msg.athletes || []) card.athletes[a.id] = a.rep_count;
    if (msg.final) { showTotals(card); return; } // the closing summary: no frame to draw
    card.last = msg;
    if (msg.jpeg) {
      const img = new Image();
      img.onload = () => { card.image = img; draw(card); };
      img.src = "data:image/jpeg;base64," + msg.jpeg;
    } else {
      draw(card);
    }
    update(card, msg);
  };
  ws.onclose = () => { card.ws = null; };
}

function draw(card) {
  const msg = card.last;
  const canvas = card.el.querySelector("canvas");
  const ctx = canvas.getContext("2d");
  const w = msg && msg.width ? msg.width : 640;
  const h = msg && msg.height ? msg.height : 480;
  const scale = Math.min(480 / w, 480 / h);
  canvas.width = Math.round(w * scale);
  canvas.height = Math.round(h * scale);
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (card.image) ctx.drawImage(card.image, 0, 0, canvas.width, canvas.height);
  if (!msg) return;
  msg.people.forEach((person, i) => {
    const athlete = person.role === "athlete";
    const color = athlete ? COLORS[person.id % COLORS.length] || COLORS[i % COLORS.length] : BYSTANDER;
    const kp = person.keypoints;
    ctx.strokeStyle = color; ctx.fillStyle = color; ctx.lineWidth = 3;
    for (const [a, b] of BONES) {
      const p = kp[J[a]], q = kp[J[b]];
      if (!p || !q || p[2] < 0.3 || q[2] < 0.3) continue;
      ctx.beginPath(); ctx.moveTo(p[0] * scale, p[1] * scale); ctx.lineTo(q[0] * scale, q[1] * scale); ctx.stroke();
    }
    for (const p of kp) {
      if (!p || p[2] < 0.3) continue;
      ctx.beginPath(); ctx.arc(p[0] * scale, p[1] * scale, 3, 0, 2 * Math.PI); ctx.fill();
    }
    const hip = kp[J.left_hip] || kp[J.nose];
    const label = athlete ? `#${person.id} athlete · ${person.rep_count} reps` : `#${person.id} bystander`;
    if (hip) { ctx.font = "bold 14px system-ui"; ctx.fillText(label, hip[0] * scale + 6, hip[1] * scale); }
  });
  canvas.dataset.frame = msg.frame; // lets tests see the canvas advance
}

function layout() {
  // One card fills the row; two to four share two columns (four streams: a 2x2 grid).
  const grid = document.getElementById("grid");
  grid.dataset.count = String(Math.min(cards.size, 4));
}

function showTotals(card) {
  // A card's reps are its athletes' totals: every athlete of the stream, seen now or not.
  const entries = Object.entries(card.athletes).sort((a, b) => Number(a[0]) - Number(b[0]));
  card.el.querySelector(".reps").textContent = entries.reduce((n, [, v]) => n + v, 0);
  card.el.querySelector(".athletes").textContent = entries.length
    ? entries.map(([id, n]) => `athlete #${id}: ${n}`).join(" · ") : "no athlete yet";
}

async function endCard(card, state) {
  // The stream is over: keep the card, with the session's summary from the database.
  if (card.ended) return;
  card.ended = true;
  const st = card.el.querySelector(".state");
  st.textContent = state || "ended"; st.className = `state badge ${state || "ended"}`;
  card.el.classList.add("ended");
  card.el.querySelector(".stop").textContent = "Dismiss";
  try {
    const s = await api(`/sessions/${card.stream.id}`);
    const totals = {};
    for (const r of s.reps) totals[r.person_id] = (totals[r.person_id] || 0) + 1;
    card.athletes = totals;
    const scores = s.reps.map((r) => r.score);
    card.el.querySelector(".summary").textContent =
      `session ${s.status}: ${s.reps.length} reps` + (scores.length ? `, mean score ${fmt(scores.reduce((a, b) => a + b, 0) / scores.length)}` : "");
  } catch (err) {
    card.el.querySelector(".summary").textContent = `session summary unavailable: ${err.message}`;
  }
  showTotals(card);
}

function dismiss(id) {
  const card = cards.get(id);
  if (!card) return;
  card.ws && card.ws.close();
  card.el.remove();
  cards.delete(id);
  layout();
}

function update(card, msg) {
  const el = card.el;
  const person = msg.people.find((p) => p.role === "athlete") || msg.people[0];
  const state = el.querySelector(".state");
  state.textContent = msg.state; state.className = `state badge ${msg.state}`;
  el.querySelector(".people").textContent = msg.people.length;
  showTotals(card);
  if (person) {
    el.querySelector(".score").textContent = fmt(person.last_rep_score);
    const faults = el.querySelector(".faults");
    faults.replaceChildren(...person.active_faults.concat(person.last_rep ? person.last_rep.faults : [])
      .slice(0, 3).map((f) => { const li = document.createElement("li"); li.textContent = f.message; return li; }));
    const rows = Object.entries(person.angles).filter(([, v]) => v !== null).slice(0, 10)
      .map(([name, v]) => { const tr = document.createElement("tr"); tr.innerHTML = `<td>${name.replaceAll("_", " ")}</td><td>${fmt(v)}°</td>`; return tr; });
    el.querySelector(".angles tbody").replaceChildren(...rows);
  }
}

async function refresh() {
  try {
    const streams = await api("/streams");
    const ids = new Set(streams.map((s) => s.id));
    for (const s of streams) {
      const card = cards.get(s.id) || makeCard(s);
      card.el.querySelector(".fps").textContent = fmt(s.fps, 1);
      if (!card.last) { const st = card.el.querySelector(".state"); st.textContent = s.state; st.className = `state badge ${s.state}`; }
      const running = s.state === "live" || s.state === "connecting" || s.state === "reconnecting";
      if (!card.ws && running) connect(card);
      if (!running && s.state !== "connecting") endCard(card, s.state);
    }
    for (const [id, card] of cards) if (!ids.has(id)) endCard(card, card.ended ? null : "ended");
    document.getElementById("empty").hidden = cards.size > 0 || !!document.querySelector(".rig-card");
    document.getElementById("status").textContent = `${streams.length} stream(s)`;
  } catch (err) {
    document.getElementById("status").textContent = `service unreachable: ${err.message}`;
  }
}

async function stopStream(id) {
  try { await api(`/streams/${id}`, { method: "DELETE" }); } catch (err) { alert(err.message); }
  refresh();
}

async function startStream(event) {
  event.preventDefault();
  const error = document.getElementById("form-error");
  error.textContent = "";
  const source = document.getElementById("f-source").value.trim();
  const body = {
    source: /^\d+$/.test(source) ? Number(source) : source,
    exercise: document.getElementById("f-exercise").value,
    realtime: document.getElementById("f-realtime").checked,
  };
  const backend = document.getElementById("f-backend").value;
  if (backend) body.backend = backend;
  try {
    await api("/streams", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    refresh();
  } catch (err) {
    error.textContent = err.message;
  }
}

async function loadExercises() {
  const select = document.getElementById("f-exercise");
  const list = await api("/exercises");
  select.replaceChildren(...list.map((e) => { const o = document.createElement("option"); o.value = o.textContent = e.name; return o; }));
}

async function loadSessions() {
  const rows = await api("/sessions?limit=200");
  const tbody = document.querySelector("#sessions tbody");
  tbody.replaceChildren(...rows.map((s) => {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td>${new Date(s.started_at).toLocaleString()}</td><td></td><td>${s.exercise}</td><td>${s.status}</td><td>${s.rep_count}</td>`;
    tr.children[1].textContent = s.source;
    tr.addEventListener("click", () => showSession(s.id));
    return tr;
  }));
}

async function showSession(id) {
  const s = await api(`/sessions/${id}`);
  const detail = document.getElementById("session-detail");
  detail.innerHTML = `<h2></h2><canvas class="rep-chart" width="800" height="220"></canvas>
    <table><thead><tr><th>person</th><th>rep</th><th>start s</th><th>end s</th><th>score</th><th>range of motion</th><th>faults</th></tr></thead><tbody></tbody></table>`;
  detail.querySelector("h2").textContent = `${s.exercise} · ${s.source} · ${s.status}`;
  detail.querySelector("tbody").replaceChildren(...s.reps.map((r) => {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td>${r.person_id}</td><td>${r.index}</td><td>${fmt(r.start_s, 2)}</td><td>${fmt(r.end_s, 2)}</td><td>${fmt(r.score)}</td><td>${fmt(r.metrics.rom_deg)}°</td><td></td>`;
    tr.lastChild.textContent = r.faults.map((f) => f.code).join(", ");
    return tr;
  }));
  drawRepChart(detail.querySelector("canvas"), s.reps);
}

function drawRepChart(canvas, reps) {
  // Per rep: the driving angle's range (min..max, a bar) and the score (a dot, right axis).
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, pad = 30;
  ctx.clearRect(0, 0, W, H);
  if (!reps.length) { ctx.fillStyle = "#8b98a5"; ctx.fillText("no reps", pad, H / 2); return; }
  const lows = reps.map((r) => r.metrics.min_deg ?? 0), highs = reps.map((r) => r.metrics.max_deg ?? r.metrics.rom_deg ?? 0);
  const top = Math.max(180, ...highs);
  const bw = (W - 2 * pad) / reps.length;
  reps.forEach((r, i) => {
    const x = pad + i * bw + bw * 0.2, y1 = H - pad - (highs[i] / top) * (H - 2 * pad), y0 = H - pad - (lows[i] / top) * (H - 2 * pad);
    ctx.fillStyle = r.faults.length ? "#d29922" : "#58a6ff";
    ctx.fillRect(x, y1, bw * 0.6, Math.max(2, y0 - y1));
    ctx.fillStyle = "#e6edf3";
    ctx.beginPath(); ctx.arc(x + bw * 0.3, H - pad - (r.score / 100) * (H - 2 * pad), 4, 0, 2 * Math.PI); ctx.fill();
    ctx.fillStyle = "#8b98a5"; ctx.fillText(String(r.index), x + bw * 0.25, H - 10);
  });
  ctx.fillStyle = "#8b98a5"; ctx.fillText("angle range per rep (bars, deg) · score (dots, 0-100)", pad, 14);
}

document.querySelectorAll(".tab").forEach((tab) => tab.addEventListener("click", () => {
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === tab));
  document.getElementById("view-live").hidden = tab.dataset.view !== "live";
  document.getElementById("view-history").hidden = tab.dataset.view !== "history";
  if (tab.dataset.view === "history") loadSessions();
}));
document.getElementById("start-form").addEventListener("submit", startStream);
loadExercises().catch((err) => { document.getElementById("form-error").textContent = err.message; });
refresh();
setInterval(refresh, 1000);
