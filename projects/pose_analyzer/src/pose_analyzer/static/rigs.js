// Rig cards of the live page: a calibrated multi-camera rig (POST /rigs) shown as its
// views, each with the fused 3D skeleton reprojected into it, plus one 3D view of the
// fused skeleton (drag to turn it), reps, cues and which views are in use, late or lost.
// Plain canvas drawing: nothing is loaded from outside the service.
"use strict";

(() => {
  const rigCards = new Map(); // rig id -> card
  const RIG_COLORS = ["#58a6ff", "#f778ba", "#3fb950", "#d29922", "#a371f7", "#39c5cf"];
  const VIEW_STATE = { used: "#3fb950", late: "#d29922", lost: "#f85149", reconnecting: "#d29922", connecting: "#8b98a5" };
  const key = new URLSearchParams(location.search).get("api_key");

  function rigApi(path, options = {}) {
    const headers = Object.assign({}, options.headers || {});
    if (key) headers["X-API-Key"] = key;
    return fetch(path, Object.assign({}, options, { headers })).then(async (r) => {
      const body = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
      if (!r.ok) throw new Error(body && body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)) : r.statusText);
      return body;
    });
  }

  function rigWs(id, frames) {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const q = new URLSearchParams();
    if (frames) q.set("frames", "true");
    if (key) q.set("api_key", key);
    return `${proto}://${location.host}/ws/rigs/${id}?${q}`;
  }

  const num = (v, d = 0) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(d));

  function makeRigCard(rig) {
    const node = document.getElementById("rig-template").content.firstElementChild.cloneNode(true);
    node.dataset.rig = rig.id;
    node.querySelector(".title").textContent = `rig · ${rig.exercise} · ${rig.views.length} views`;
    const grid = node.querySelector(".views");
    const views = {};
    for (const v of rig.views) {
      const c = document.createElement("canvas");
      c.width = 240; c.height = 240; c.className = "view"; c.dataset.view = v.name;
      grid.appendChild(c);
      views[v.name] = { canvas: c, image: null, size: v.size };
    }
    const canvas3d = node.querySelector("canvas.rig3d");
    const card = { el: node, rig, ws: null, last: null, views, canvas3d, yaw: -0.6, pitch: 0.35, ended: false, center: null };
    canvas3d.dataset.yaw = card.yaw.toFixed(3);
    let drag = null;
    canvas3d.addEventListener("pointerdown", (e) => { drag = { x: e.clientX, y: e.clientY }; canvas3d.setPointerCapture?.(e.pointerId); });
    canvas3d.addEventListener("pointermove", (e) => {
      if (!drag) return;
      card.yaw += (e.clientX - drag.x) * 0.01;
      card.pitch = Math.max(-1.45, Math.min(1.45, card.pitch + (e.clientY - drag.y) * 0.01));
      drag = { x: e.clientX, y: e.clientY };
      canvas3d.dataset.yaw = card.yaw.toFixed(3);
      draw3d(card);
    });
    const end = () => { drag = null; };
    canvas3d.addEventListener("pointerup", end);
    canvas3d.addEventListener("pointerleave", end);
    node.querySelector(".stop").addEventListener("click", () => (card.ended ? dismissRig(rig.id) : stopRig(rig.id)));
    document.getElementById("rigs").appendChild(node);
    rigCards.set(rig.id, card);
    connectRig(card);
    draw3d(card);
    return card;
  }

  function connectRig(card) {
    const frames = document.getElementById("f-frames").checked;
    const ws = new WebSocket(rigWs(card.rig.id, frames));
    card.ws = ws;
    ws.onmessage = (event) => {
      const msg = JSON.parse(event.data);
      if (msg.jpegs) { // per-view frames (only when asked for), a message of their own
        for (const [name, b64] of Object.entries(msg.jpegs)) {
          const view = card.views[name];
          if (!view || !b64) continue;
          const img = new Image();
          img.onload = () => { view.image = img; if (card.last) drawView(card, name); };
          img.src = "data:image/jpeg;base64," + b64;
        }
        return;
      }
      if (msg.final) {
        if (msg.last_instant && !card.last) { card.last = msg.last_instant; drawAll(card); updateRig(card, card.last); }
        card.el.querySelector(".summary").textContent = `${msg.state}: ${msg.reason || ""}`;
        // The final totals: a rep still open when the views ended is counted at the end.
        const totals = Object.values(msg.rep_counts || {});
        card.el.querySelector(".reps").textContent = totals.reduce((a, b) => a + b, 0);
        return;
      }
      card.last = msg;
      drawAll(card);
      updateRig(card, msg);
    };
    ws.onclose = () => { card.ws = null; };
  }

  function drawAll(card) {
    for (const name of Object.keys(card.views)) drawView(card, name);
    draw3d(card);
  }

  function bones() {
    // The page's skeleton (app.js): BONES and J are globals there.
    return BONES.map(([a, b]) => [J[a], J[b]]);
  }

  function drawView(card, name) {
    const view = card.views[name];
    const msg = card.last;
    const size = (msg && msg.sizes && msg.sizes[name]) || view.size || [1080, 1920];
    const scale = Math.min(240 / size[0], 240 / size[1]);
    const c = view.canvas;
    c.width = Math.round(size[0] * scale); c.height = Math.round(size[1] * scale);
    const ctx = c.getContext("2d");
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, c.width, c.height);
    if (view.image) ctx.drawImage(view.image, 0, 0, c.width, c.height);
    if (!msg) return;
    const status = (msg.views && msg.views[name]) || "late";
    const people = (msg.reprojected && msg.reprojected[name]) || {};
    for (const [pid, pts] of Object.entries(people)) {
      const color = RIG_COLORS[Number(pid) % RIG_COLORS.length];
      ctx.strokeStyle = color; ctx.fillStyle = color; ctx.lineWidth = 2;
      ctx.globalAlpha = status === "used" ? 1 : 0.45; // reprojected into a view that did not see it
      for (const [a, b] of bones()) {
        const p = pts[a], q = pts[b];
        if (!p || !q) continue;
        ctx.beginPath(); ctx.moveTo(p[0] * scale, p[1] * scale); ctx.lineTo(q[0] * scale, q[1] * scale); ctx.stroke();
      }
      for (const p of pts) if (p) { ctx.beginPath(); ctx.arc(p[0] * scale, p[1] * scale, 2, 0, 2 * Math.PI); ctx.fill(); }
      ctx.globalAlpha = 1;
    }
    ctx.font = "bold 12px system-ui"; ctx.fillStyle = VIEW_STATE[status] || "#8b98a5";
    ctx.fillText(`${name} · ${status}`, 6, 16);
    c.dataset.instant = msg.instant;
    c.dataset.status = status;
  }

  function draw3d(card) {
    const c = card.canvas3d;
    const ctx = c.getContext("2d");
    const W = c.width, H = c.height;
    ctx.fillStyle = "#0b0f14"; ctx.fillRect(0, 0, W, H);
    const msg = card.last;
    const people = msg ? msg.people : [];
    // Centre on the people (their mean joint, on the floor): the view follows them.
    const all = people.flatMap((p) => Object.values(p.joints));
    if (all.length) {
      const m = [0, 1].map((i) => all.reduce((s, q) => s + q[i], 0) / all.length);
      card.center = card.center ? card.center.map((v, i) => v * 0.8 + m[i] * 0.2) : m;
    }
    const [cx, cy] = card.center || [0, 0];
    const s = H / 2.6; // pixels per metre: a 2.6 m tall view
    const cyaw = Math.cos(card.yaw), syaw = Math.sin(card.yaw), cp = Math.cos(card.pitch), sp = Math.sin(card.pitch);
    const project = (x, y, z) => {
      const dx = x - cx, dy = y - cy, dz = z - 0.9;
      const x1 = cyaw * dx - syaw * dy, y1 = syaw * dx + cyaw * dy;
      const z2 = sp * y1 + cp * dz;
      return [W / 2 + s * x1, H / 2 - s * z2];
    };
    // Floor grid (z = 0), 0.5 m squares over 4 m, and the world axes at the centre.
    ctx.strokeStyle = "#2a3642"; ctx.lineWidth = 1;
    for (let k = -4; k <= 4; k++) {
      const a = project(cx + k * 0.5, cy - 2, 0), b = project(cx + k * 0.5, cy + 2, 0);
      const e = project(cx - 2, cy + k * 0.5, 0), f = project(cx + 2, cy + k * 0.5, 0);
      ctx.beginPath(); ctx.moveTo(...a); ctx.lineTo(...b); ctx.moveTo(...e); ctx.lineTo(...f); ctx.stroke();
    }
    const o = project(cx, cy, 0);
    for (const [d, color] of [[[0.5, 0, 0], "#f85149"], [[0, 0.5, 0], "#3fb950"], [[0, 0, 0.5], "#58a6ff"]]) {
      const q = project(cx + d[0], cy + d[1], d[2]);
      ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath(); ctx.moveTo(...o); ctx.lineTo(...q); ctx.stroke();
    }
    for (const person of people) {
      const color = RIG_COLORS[person.id % RIG_COLORS.length];
      const js = person.joints;
      ctx.strokeStyle = color; ctx.fillStyle = color; ctx.lineWidth = 3;
      for (const [a, b] of BONES) {
        if (!js[a] || !js[b]) continue;
        ctx.beginPath(); ctx.moveTo(...project(...js[a])); ctx.lineTo(...project(...js[b])); ctx.stroke();
      }
      for (const p of Object.values(js)) { ctx.beginPath(); ctx.arc(...project(...p), 3, 0, 2 * Math.PI); ctx.fill(); }
      const head = js.nose || Object.values(js)[0];
      if (head) { const [hx, hy] = project(...head); ctx.font = "bold 13px system-ui"; ctx.fillText(`#${person.id} · ${person.rep_count} reps`, hx + 8, hy - 8); }
    }
    ctx.fillStyle = "#8b98a5"; ctx.font = "11px system-ui";
    ctx.fillText("drag to turn · grid 0.5 m", 8, H - 8);
    if (msg) c.dataset.instant = msg.instant;
  }

  function updateRig(card, msg) {
    const el = card.el;
    const st = el.querySelector(".state");
    st.textContent = msg.state; st.className = `state badge ${msg.state}`;
    const counts = Object.values(msg.rep_counts || {});
    el.querySelector(".reps").textContent = counts.reduce((a, b) => a + b, 0);
    el.querySelector(".views-used").textContent = `${msg.views_used.length}/${Object.keys(card.views).length}`;
    const person = msg.people[0];
    el.querySelector(".reproj").textContent = person ? num(person.reprojection_error_px, 1) : "–";
    const lost = Object.entries(msg.views_lost || {}).map(([n, why]) => `${n} lost (${why})`);
    const late = (msg.views_late || []).map((n) => `${n} late`);
    el.querySelector(".view-notes").textContent = lost.concat(late).join(" · ") || "all views in use";
    if (person) {
      const cues = person.active_faults.concat(person.new_rep ? person.new_rep.faults : []).slice(0, 3);
      el.querySelector(".faults").replaceChildren(...cues.map((f) => { const li = document.createElement("li"); li.textContent = f.message; return li; }));
      const rows = Object.entries(person.angles).filter(([, v]) => v !== null).slice(0, 8)
        .map(([n, v]) => { const tr = document.createElement("tr"); tr.innerHTML = `<td>${n.replaceAll("_", " ")}</td><td>${num(v)}°</td>`; return tr; });
      el.querySelector(".angles tbody").replaceChildren(...rows);
    }
  }

  function endRig(card, state, reason) {
    if (card.ended) return;
    card.ended = true;
    card.el.classList.add("ended");
    const st = card.el.querySelector(".state");
    st.textContent = state; st.className = `state badge ${state}`;
    card.el.querySelector(".stop").textContent = "Dismiss";
    if (reason && !card.el.querySelector(".summary").textContent) card.el.querySelector(".summary").textContent = `${state}: ${reason}`;
    card.el.dataset.ended = "true";
  }

  function dismissRig(id) {
    const card = rigCards.get(id);
    if (!card) return;
    card.ws && card.ws.close();
    card.el.remove();
    rigCards.delete(id);
  }

  async function stopRig(id) {
    try { await rigApi(`/rigs/${id}`, { method: "DELETE" }); } catch (err) { alert(err.message); }
    refreshRigs();
  }

  async function refreshRigs() {
    try {
      const rigs = await rigApi("/rigs");
      const ids = new Set(rigs.map((r) => r.id));
      for (const r of rigs) {
        const card = rigCards.get(r.id) || makeRigCard(r);
        card.el.querySelector(".fps").textContent = num(r.fps, 1);
        const running = r.state === "live" || r.state === "connecting";
        if (!card.ws && running) connectRig(card);
        if (!running) endRig(card, r.state, r.reason);
      }
      for (const [, card] of rigCards) if (!ids.has(card.rig.id)) endRig(card, "ended", null);
      if (rigCards.size) document.getElementById("empty").hidden = true;
    } catch (err) {
      // app.js reports an unreachable service
    }
  }

  async function startRig(event) {
    event.preventDefault();
    const error = document.getElementById("rig-error");
    error.textContent = "";
    const sources = document.getElementById("r-sources").value.split(",").map((s) => s.trim()).filter(Boolean)
      .map((s) => (/^\d+$/.test(s) ? Number(s) : s));
    const body = {
      sources,
      calibration: document.getElementById("r-calibration").value.trim(),
      exercise: document.getElementById("f-exercise").value,
      realtime: document.getElementById("f-realtime").checked,
    };
    const backend = document.getElementById("f-backend").value;
    if (backend) body.backend = backend;
    try {
      await rigApi("/rigs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      refreshRigs();
    } catch (err) {
      error.textContent = err.message;
    }
  }

  document.getElementById("rig-form").addEventListener("submit", startRig);
  refreshRigs();
  setInterval(refreshRigs, 1000);
})();
