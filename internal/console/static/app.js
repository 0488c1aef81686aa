// Ambit mesh console: plain JS, no build step. Reads /api/* and draws SVG.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const main = document.getElementById("main");
let timer = null;

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVGNS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v);
  }
  if (text !== undefined) e.textContent = text;
  return e;
}

async function getJSON(path) {
  const r = await fetch(path, { headers: { "Accept": "application/json" } });
  if (!r.ok) throw new Error(path + ": " + r.status + " " + (await r.text()));
  return r.json();
}

function fmtRate(v, unit) {
  if (v >= 100) return v.toFixed(0) + " " + unit;
  if (v >= 10) return v.toFixed(1) + " " + unit;
  return v.toFixed(2) + " " + unit;
}
function fmtBytes(v) {
  const u = ["B/s", "KB/s", "MB/s", "GB/s"];
  let i = 0;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return v.toFixed(v >= 10 ? 0 : 1) + " " + u[i];
}
function fmtSeconds(s) {
  if (s < 0) return "–";
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 1 : 0) + " ms";
  return s.toFixed(2) + " s";
}
function edgeLabel(e, win) {
  if (e.protocol === "http") {
    const rate = win > 0 ? fmtRate(e.requestRate, "rps") : e.requests + " req";
    return rate + " · " + (e.errorRate * 100).toFixed(1) + "% err · p99 " + fmtSeconds(e.p99);
  }
  if (e.protocol === "tcp") {
    return win > 0 ? fmtRate(e.connRate, "conn/s") + " · " + fmtBytes(e.bytesRate) : e.conns + " conns";
  }
  return "";
}

function setNav(which) {
  for (const id of ["graph", "validation"]) {
    document.getElementById("nav-" + id).classList.toggle("active", id === which);
  }
}

function status(text) { document.getElementById("status").textContent = text; }

// layout ranks nodes left to right along the edges (longest path from a
// node nobody sends to); nodes without edges go to a row of their own.
function layout(g) {
  const out = {}, incoming = {}, rank = {};
  for (const n of g.nodes) { out[n.id] = []; incoming[n.id] = 0; }
  for (const e of g.edges) {
    if (e.source === e.target || !(e.source in out) || !(e.target in out)) continue;
    out[e.source].push(e.target);
    incoming[e.target]++;
  }
  const linked = new Set();
  for (const e of g.edges) { linked.add(e.source); linked.add(e.target); }
  for (const n of g.nodes) if (linked.has(n.id)) rank[n.id] = 0;
  for (let i = 0; i < g.nodes.length; i++) {
    let changed = false;
    for (const e of g.edges) {
      if (e.source === e.target || !(e.source in rank) || !(e.target in rank)) continue;
      if (rank[e.target] < rank[e.source] + 1 && rank[e.source] + 1 < g.nodes.length) {
        rank[e.target] = rank[e.source] + 1;
        changed = true;
      }
    }
    if (!changed) break;
  }
  const cols = {};
  for (const n of g.nodes) {
    if (!(n.id in rank)) continue;
    (cols[rank[n.id]] = cols[rank[n.id]] || []).push(n);
  }
  const pos = {};
  const W = 180, H = 46, DX = 420, DY = 92;
  let maxRows = 0, maxCol = 0;
  for (const [c, ns] of Object.entries(cols)) {
    ns.sort((a, b) => a.id.localeCompare(b.id));
    ns.forEach((n, i) => { pos[n.id] = { x: 30 + c * DX, y: 40 + i * DY, w: W, h: H, rank: +c }; });
    maxRows = Math.max(maxRows, ns.length);
    maxCol = Math.max(maxCol, +c);
  }
  // Edges that skip a column pass below it.
  let skips = 0;
  for (const e of g.edges) {
    const a = pos[e.source], b = pos[e.target];
    if (a && b && b.rank - a.rank > 1) skips++;
  }
  const bottom = 40 + Math.max(maxRows, 1) * DY;
  const idle = g.nodes.filter(n => !(n.id in rank));
  const idleY = bottom + 40 + skips * 52;
  idle.forEach((n, i) => { pos[n.id] = { x: 30 + i * (W + 20), y: idleY, w: W, h: H, idle: true }; });
  const width = Math.max(60 + maxCol * DX + W, 60 + idle.length * (W + 20), 600);
  const height = idleY + (idle.length ? H + 30 : 0);
  return { pos, width, height, bottom };

}

function lockMark(x, y) {
  const g = el("svg:g", { class: "mark lock", transform: `translate(${x},${y})` });
  g.append(el("svg:title", {}, "mutual TLS"));
  g.append(el("svg:path", { d: "M2 5 V3 a3 3 0 0 1 6 0 V5", fill: "none", "stroke-width": 1.6 }));
  g.append(el("svg:rect", { x: 0, y: 5, width: 10, height: 7, rx: 1.5 }));
  return g;
}
function denyMark(x, y, e) {
  const g = el("svg:g", { class: "mark deny", transform: `translate(${x},${y})` });
  g.append(el("svg:title", {}, "denied: " + Math.round(e.denied) + " (" + (e.denyReasons || []).join(", ") + ")"));
  g.append(el("svg:circle", { cx: 6, cy: 6, r: 7 }));
  g.append(el("svg:text", { x: 6, y: 9.5, "text-anchor": "middle" }, "✕"));
  return g;
}
function waypointMark(x, y, e) {
  const g = el("svg:g", { class: "mark waypoint", transform: `translate(${x},${y})` });
  g.append(el("svg:title", {}, "through waypoint " + e.waypoint));
  g.append(el("svg:rect", { x: 0, y: 0, width: 13, height: 13, rx: 3 }));
  g.append(el("svg:text", { x: 6.5, y: 10, "text-anchor": "middle" }, "W"));
  return g;
}

function drawGraph(g) {
  const { pos, width, height, bottom } = layout(g);
  const svg = el("svg:svg", { id: "graph", width, height, viewBox: `0 0 ${width} ${height}` });
  const defs = el("svg:defs");
  for (const [id, color] of [["arrow", "#4a7fc1"], ["arrow-http", "#d08a10"], ["arrow-deny", "#c62828"], ["arrow-endpoint", "#b8c0cc"]]) {
    const m = el("svg:marker", { id, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
    m.append(el("svg:path", { d: "M0 0 L10 5 L0 10 z", fill: color }));
    defs.append(m);
  }
  svg.append(defs);
  const pairCount = {};
  let dips = 0;
  const bez = (p0, p1, p2, p3, t) => {
    const u = 1 - t;
    return u * u * u * p0 + 3 * u * u * t * p1 + 3 * u * t * t * p2 + t * t * t * p3;
  };
  // Endpoint links first, so traffic is drawn over them.
  const ordered = g.edges.filter(e => e.protocol === "endpoint").concat(g.edges.filter(e => e.protocol !== "endpoint"));
  for (const e of ordered) {
    const a = pos[e.source], b = pos[e.target];
    if (!a || !b) continue;
    const pair = [e.source, e.target].sort().join("|");
    const k = pairCount[pair] = (pairCount[pair] || 0) + 1;
    let x1 = a.x + a.w, y1 = a.y + a.h / 2, x2 = b.x, y2 = b.y + b.h / 2;
    let c1x, c1y, c2x, c2y;
    if (b.rank - a.rank === 1) {
      const bend = (k - 1) * 30;
      c1x = x1 + 90; c1y = y1 + bend; c2x = x2 - 90; c2y = y2 + bend;
    } else if (b.rank - a.rank > 1) {
      const dip = bottom + 4 + dips++ * 52;
      y1 = a.y + a.h; x1 = a.x + a.w - 30; y2 = b.y + b.h; x2 = b.x + 30;
      c1x = x1 + 60; c1y = dip + 30; c2x = x2 - 60; c2y = dip + 30;
    } else {
      x1 = a.x + a.w / 2; y1 = a.y; x2 = b.x + b.w / 2; y2 = b.y;
      c1x = x1; c1y = y1 - 50 - k * 20; c2x = x2; c2y = y2 - 50 - k * 20;
    }
    const d = `M${x1} ${y1} C${c1x} ${c1y} ${c2x} ${c2y} ${x2} ${y2}`;
    const denied = e.denied > 0;
    const onlyDenied = denied && !(e.conns || e.requests);
    const cls = ["edge", e.protocol, denied ? "denied" : "", onlyDenied ? "denied-only" : "", e.mtls ? "mtls" : "", e.waypoint ? "via-waypoint" : ""].filter(Boolean).join(" ");
    const ge = el("svg:g", {
      class: cls, "data-id": e.id, "data-source": e.source, "data-target": e.target, "data-protocol": e.protocol,
      "data-mtls": String(!!e.mtls), "data-denied": String(denied), "data-waypoint": e.waypoint || "",
    });
    const marker = e.protocol === "endpoint" ? "arrow-endpoint" : onlyDenied ? "arrow-deny" : e.protocol === "http" ? "arrow-http" : "arrow";
    ge.append(el("svg:path", { d, "marker-end": `url(#${marker})` }));
    if (e.protocol !== "endpoint") {
      const mx = bez(x1, c1x, c2x, x2, 0.5), my = bez(y1, c1y, c2y, y2, 0.5) - 6;
      ge.append(el("svg:title", {}, `${e.source} → ${e.target} (${e.protocol}${e.waypoint ? ", through " + e.waypoint : ""})`));
      const text = edgeLabel(e, g.window);
      ge.append(el("svg:text", { x: mx + 8, y: my, "text-anchor": "middle" }, text));
      // Marks sit in a row above the label, centred.
      const marks = [];
      if (e.mtls) marks.push([13, x => lockMark(x, my - 24)]);
      if (e.waypoint) marks.push([17, x => waypointMark(x, my - 25, e)]);
      if (denied) marks.push([16, x => denyMark(x, my - 24, e)]);
      let mxk = mx + 8 - marks.reduce((w, m) => w + m[0], 0) / 2;
      for (const [w, draw] of marks) { ge.append(draw(mxk)); mxk += w; }
    }
    svg.append(ge);
  }
  for (const n of g.nodes) {
    const p = pos[n.id];
    const gn = el("svg:g", { class: `node ${n.kind}${p.idle ? " idle" : ""}`, "data-id": n.id, "data-kind": n.kind, transform: `translate(${p.x},${p.y})` });
    gn.append(el("svg:rect", { width: p.w, height: p.h, rx: 8 }));
    const title = n.kind === "service" ? "svc " + n.name : n.name;
    gn.append(el("svg:text", { x: 10, y: 19 }, title.length > 26 ? title.slice(0, 25) + "…" : title));
    const sub = [n.namespace, n.kind === "workload" ? n.node : n.kind, n.waypoint ? "waypoint " + n.waypoint : ""].filter(Boolean).join(" · ");
    gn.append(el("svg:text", { x: 10, y: 35, class: "sub" }, sub));
    if (n.kind === "workload") {
      gn.addEventListener("click", () => { location.hash = `#/workload/${encodeURIComponent(n.namespace)}/${encodeURIComponent(n.name)}`; });
    }
    svg.append(gn);
  }
  return svg;
}

async function showGraph() {
  setNav("graph");
  const g = await getJSON("api/graph");
  const box = el("div");
  box.append(el("h2", {}, "Service graph"));
  const legend = el("div", { class: "legend" });
  legend.innerHTML = '<svg width="12" height="13" class="mark lock"><path d="M2 5 V3 a3 3 0 0 1 6 0 V5" fill="none" stroke-width="1.6"/><rect x="0" y="5" width="10" height="7" rx="1.5"/></svg> mutual TLS <span></span><span class="pill wp">W</span> through a waypoint <span></span><span class="pill deny">✕</span> denials <span></span>' +
    '<i class="line tcp"></i> TCP (node proxies) <span></span><i class="line http"></i> HTTP (waypoint) <span></span><i class="line endpoint"></i> service endpoint';
  box.append(legend);
  box.append(drawGraph(g));
  if (g.errors && g.errors.length) {
    const ul = el("ul", { class: "muted", id: "errors" });
    for (const e of g.errors) ul.append(el("li", {}, e));
    box.append(el("h3", {}, "Sources that did not answer"), ul);
  }
  main.replaceChildren(box);
  const win = g.window > 0 ? "rates over the last " + Math.round(g.window) + " s" : "totals (rates after the next sample)";
  status(`configuration ${g.version || "–"} · ${g.nodes.length} nodes · ${g.edges.filter(e => e.protocol !== "endpoint").length} edges · ${win}`);
  document.getElementById("source").textContent = "Metrics: " + g.source + ".";
  document.body.dataset.ready = "graph";
}

function table(headers, rows) {
  const t = el("table");
  if (headers) {
    const tr = el("tr");
    for (const h of headers) tr.append(el("th", {}, h));
    t.append(tr);
  }
  for (const r of rows) {
    const row = el("tr");
    for (const c of r) {
      const td = el("td");
      if (c instanceof Node) td.append(c); else td.textContent = c;
      row.append(td);
    }
    t.append(row);
  }
  return t;
}

function labels(m) { return Object.entries(m || {}).map(([k, v]) => k + "=" + v).join(", ") || "–"; }

async function showWorkload(ns, name) {
  setNav("");
  const p = await getJSON(`api/workload?namespace=${encodeURIComponent(ns)}&name=${encodeURIComponent(name)}`);
  const w = p.workload;
  const box = el("div", { id: "workload", "data-workload": w.namespace + "/" + w.name });
  box.append(el("h2", {}, `Workload ${w.namespace}/${w.name}`));
  box.append(table(null, [
    ["identity", w.identity || "–"], ["service account", w.serviceAccount || "–"], ["node", w.node || "–"],
    ["addresses", (w.ips || []).join(", ") || "–"], ["labels", labels(w.labels)],
  ]));
  box.append(el("h3", {}, "Certificate"));
  box.append(p.certificates.length ? table(["node proxy", "node", "expires", "left"], p.certificates.map(c => [c.instance, c.node || "–", c.notAfter, c.left]))
    : el("p", { class: "muted" }, "No node proxy reports a certificate for this identity."));
  box.append(el("h3", {}, "Policies that apply"));
  box.append(p.policies.length ? table(["policy", "action", "selector", "rules"], p.policies.map(x => [x.namespace + "/" + x.name, x.action + (x.dryRun ? " (dry run)" : ""), labels(x.selector), String(x.rules) + (x.l7 ? " (L7)" : "")]))
    : el("p", { class: "muted" }, "No AccessPolicy selects this workload: everything is allowed."));
  box.append(el("h3", {}, "Recent denials"));
  box.append(p.denials.length ? table(["from", "to", "protocol", "denied", "per second", "why"], p.denials.map(e => [e.source, e.target, e.protocol, String(Math.round(e.denied)), e.deniedRate.toFixed(2), (e.denyReasons || []).join(", ")]))
    : el("p", { class: "muted" }, "None."));
  box.append(el("h3", {}, "Traffic"));
  box.append(table(["from", "to", "protocol", "rate", "mTLS", "waypoint"], p.traffic.filter(e => e.protocol !== "endpoint").map(e => [e.source, e.target, e.protocol, edgeLabel(e, 1), e.mtls ? "yes" : "no", e.waypoint || "–"])));
  main.replaceChildren(box);
  status(`workload ${w.namespace}/${w.name}`);
  document.body.dataset.ready = "workload";
}

async function showValidation() {
  setNav("validation");
  const v = await getJSON("api/validation");
  const box = el("div", { id: "validation" });
  box.append(el("h2", {}, "Configuration"));
  const state = v.refused.length ? el("span", { class: "bad" }, `${v.refused.length} refused`) : el("span", { class: "ok" }, "all accepted");
  box.append(table(null, [["version in force", v.version || "none yet"], ["state", state],
    ["resources", Object.entries(v.counts || {}).map(([k, n]) => `${n} ${k}`).join(", ") || "–"]]));
  box.append(el("h3", {}, "Refused"));
  box.append(v.refused.length ? table(["refused by", "what", "why"], v.refused.map(r => [r.by, r.what || "–", r.reason]))
    : el("p", { class: "muted" }, "Nothing refused: the configuration on the source is the one in force."));
  box.append(el("h3", {}, "Proxies"));
  box.append(table(["kind", "node", "name", "acked version", "up to date", "last NACK"], v.proxies.map(p => [p.kind, p.node, p.name || "–", p.ackedVersion || "–",
    p.upToDate ? "yes" : "no", p.lastNack ? p.lastNack.reason : "–"])));
  main.replaceChildren(box);
  status(`configuration ${v.version || "–"}`);
  document.body.dataset.ready = "validation";
}

async function route() {
  clearTimeout(timer);
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  try {
    if (parts[0] === "workload" && parts.length >= 3) await showWorkload(parts[1], parts[2]);
    else if (parts[0] === "validation") await showValidation();
    else await showGraph();
  } catch (err) {
    main.replaceChildren(el("p", { class: "bad", id: "error" }, String(err)));
    document.body.dataset.ready = "error";
  }
  timer = setTimeout(route, 5000);
}

window.addEventListener("hashchange", route);
route();
