// flowmill dashboard: one static page over the JSON API (/api/...). No build step.
// Every view polls its endpoint every POLL_MS; output frames arrive over SSE. When a read
// fails, what is on screen is marked stale with the time of the last good read.
"use strict";

const POLL_MS = 2000;
const STATES = ["scheduled", "blocked", "ready", "running", "waiting_children", "suspended",
  "completed", "failed", "dead_lettered", "cancelled", "skipped", "expired"];
const view = document.getElementById("view");
const banner = document.getElementById("banner");
const statusEl = document.getElementById("status");
let lastOk = null;
let timer = null;
let frames = null; // the EventSource of the task page
let generation = 0; // bumps on navigation: late answers of an old view are dropped

// -- helpers -------------------------------------------------------------------------

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}
const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...kids) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const kid of kids.flat(Infinity)) if (kid !== null && kid !== undefined)
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  return el;
}
function stateBadge(st) { return h("span", {class: "state " + st, text: st.replace("_", " ")}); }
function ago(ms) {
  if (ms === null || ms === undefined) return "";
  const sec = Math.max(0, (Date.now() - ms) / 1000);
  return dur(sec) + " ago";
}
function dur(sec) {
  if (sec === null || sec === undefined) return "–";
  if (sec < 1) return Math.round(sec * 1000) + " ms";
  if (sec < 120) return sec.toFixed(1) + " s";
  if (sec < 7200) return Math.round(sec / 60) + " min";
  return (sec / 3600).toFixed(1) + " h";
}
function clock(ms) { return new Date(ms).toLocaleTimeString(); }
function cookie(name) {
  const m = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
  return m ? decodeURIComponent(m.slice(name.length + 1)) : "";
}
function taskLink(id) { return h("a", {href: "#/task/" + encodeURIComponent(id), class: "mono", text: id}); }
function json(v) { return JSON.stringify(v, null, 2); }

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options) {
  const opts = Object.assign({credentials: "same-origin", headers: {}}, options || {});
  if (opts.method === "POST") {
    opts.headers["X-CSRF-Token"] = cookie("flowmill_csrf");
    opts.headers["Content-Type"] = "application/json";
  }
  let res;
  try {
    res = await fetch("api/" + path, opts);
  } catch (e) {
    throw new ApiError(0, "the dashboard server cannot be reached");
  }
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) throw new ApiError(res.status, (body && body.error) || res.statusText);
  return body;
}

function fresh() {
  lastOk = Date.now();
  banner.hidden = true;
  view.classList.remove("stale");
  statusEl.classList.remove("stale");
  statusEl.textContent = "live · read " + clock(lastOk);
}

function failed(err) {
  if (err.status === 401) {
    banner.hidden = false;
    banner.textContent = "Your session has ended: open the login URL flowmill serve printed.";
  } else if (err.status === 0 || err.status === 503 || err.status >= 500) {
    banner.hidden = false;
    banner.textContent = err.message;
  } else {
    banner.hidden = false;
    banner.textContent = "Error " + err.status + ": " + err.message;
  }
  // Never show old numbers as current: mark them stale, with the time of the last good read.
  view.classList.add("stale");
  statusEl.classList.add("stale");
  statusEl.textContent = lastOk ? "stale · last good read " + clock(lastOk) : "no data";
}

function confirmBox(text) {
  const dlg = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), {once: true});
    dlg.showModal();
  });
}

async function act(path, body, what) {
  if (!(await confirmBox(what + "?"))) return null;
  try {
    const out = await api(path, {method: "POST", body: JSON.stringify(body || {})});
    refresh();
    return out;
  } catch (err) {
    failed(err);
    return null;
  }
}

// -- routing -------------------------------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query] = hash.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return {name: parts[0] || "overview", arg: parts[1], params: new URLSearchParams(query || "")};
}

const views = {overview, tasks, task, workflows, workflow, dead};

async function refresh() {
  const r = route();
  const mine = generation;
  const render = views[r.name] || overview;
  try {
    const content = await render(r);
    if (mine !== generation) return;
    if (content) view.replaceChildren(...[].concat(content));
    fresh();
  } catch (err) {
    if (mine !== generation) return;
    if (err.status === 404 || err.status === 400) {
      view.replaceChildren(h("h1", {text: "Not found"}), h("p", {class: "error", text: err.message}));
      fresh();
      return;
    }
    failed(err);
  }
}

function navigate() {
  generation += 1;
  if (frames) { frames.close(); frames = null; }
  const r = route();
  for (const a of document.querySelectorAll("nav a"))
    a.classList.toggle("active", a.dataset.view === (r.name === "task" ? "tasks" : r.name === "workflow" ? "workflows" : r.name));
  view.replaceChildren(h("p", {class: "muted", text: "loading…"}));
  clearInterval(timer);
  refresh();
  timer = setInterval(refresh, POLL_MS);
}

// -- overview ------------------------------------------------------------------------

function chart(t) {
  const W = 600, H = 120, n = t.completed.length;
  const max = Math.max(1, ...t.completed.map((c, i) => c + t.failed[i]));
  const bw = W / n;
  const bars = [];
  for (let i = 0; i < n; i++) {
    const ok = (t.completed[i] / max) * (H - 20), bad = (t.failed[i] / max) * (H - 20);
    const when = new Date(t.start_ms + i * t.bucket_s * 1000).toLocaleTimeString();
    bars.push(s("rect", {x: i * bw + 1, y: H - ok, width: bw - 2, height: ok, fill: "#1f8a4c"},
      s("title", {}, when + ": " + t.completed[i] + " completed, " + t.failed[i] + " failed")));
    bars.push(s("rect", {x: i * bw + 1, y: H - ok - bad, width: bw - 2, height: bad, fill: "#c0392b"}));
  }
  const total = t.completed.reduce((a, b) => a + b, 0), bad = t.failed.reduce((a, b) => a + b, 0);
  return h("div", {class: "live"},
    s("svg", {class: "chart", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
      "aria-label": "tasks finished per minute, last hour"},
      s("text", {x: 6, y: 14, "font-size": 11, fill: "#6a7380"}, "max " + max + "/min"), bars),
    h("div", {class: "muted", text: `last hour: ${total} completed, ${bad} failed` + (t.behind ? " (still reading the event log)" : "")}));
}

async function overview() {
  const o = await api("overview");
  const totals = {};
  for (const q of o.queues) for (const [st, n] of Object.entries(q.counts)) totals[st] = (totals[st] || 0) + n;
  const cards = h("div", {class: "cards live"},
    ["ready", "running", "scheduled", "completed", "failed"].map((st) =>
      h("div", {class: "card"}, h("div", {class: "n", id: "count-" + st, text: totals[st] || 0}), h("div", {class: "l", text: st}))),
    h("div", {class: "card"}, h("div", {class: "n", id: "count-dead", text: o.dead_letters}), h("div", {class: "l", text: "dead letters"})),
    h("div", {class: "card"}, h("div", {class: "n", id: "workers-alive", text: o.workers_alive}), h("div", {class: "l", text: "live workers"})));
  const shown = STATES.filter((st) => o.queues.some((q) => q.counts[st]));
  const queues = h("table", {class: "live", id: "queues"},
    h("thead", {}, h("tr", {}, h("th", {text: "queue"}), shown.map((st) => h("th", {text: st.replace("_", " ")})),
      h("th", {text: "oldest ready"}), h("th", {text: ""}))),
    h("tbody", {}, o.queues.length ? o.queues.map((q) => h("tr", {"data-queue": q.name},
      h("td", {}, h("a", {href: "#/tasks?queue=" + encodeURIComponent(q.name), text: q.name}),
        q.paused ? h("span", {class: "paused", text: " paused"}) : null),
      shown.map((st) => h("td", {class: "num", "data-state": st, text: q.counts[st] || 0})),
      h("td", {text: q.oldest_ready_s === null ? "–" : dur(q.oldest_ready_s)}),
      h("td", {}, q.paused
        ? h("button", {class: "resume", onclick: () => act("queues/" + encodeURIComponent(q.name) + "/resume", {}, "Resume queue " + q.name), text: "Resume"})
        : h("button", {class: "pause danger", onclick: () => act("queues/" + encodeURIComponent(q.name) + "/pause", {}, "Pause queue " + q.name), text: "Pause"}))))
      : h("tr", {}, h("td", {class: "muted", text: "no tasks yet"}))));
  const workers = h("table", {class: "live"},
    h("thead", {}, h("tr", {}, ["worker", "host", "pid", "queues", "in flight", "status", "last seen"].map((c) => h("th", {text: c})))),
    h("tbody", {}, o.workers.length ? o.workers.map((w) => h("tr", {},
      h("td", {class: "mono", text: w.id}), h("td", {text: w.host}), h("td", {text: w.pid}),
      h("td", {text: w.queues.join(", ")}), h("td", {class: "num", text: w.in_flight + "/" + w.concurrency}),
      h("td", {}, h("span", {class: "state " + (w.status === "alive" ? "running" : "cancelled"), text: w.status})),
      h("td", {text: dur(w.last_seen_s) + " ago"})))
      : h("tr", {}, h("td", {class: "muted", text: "no worker registered"}))));
  const budgets = o.budgets.length ? [h("h2", {text: "Budgets"}), h("table", {class: "live"},
    h("thead", {}, h("tr", {}, ["budget", "usage", "hard", "soft", ""].map((c) => h("th", {text: c})))),
    h("tbody", {}, o.budgets.map((b) => h("tr", {}, h("td", {text: b.id}), h("td", {class: "mono", text: JSON.stringify(b.usage)}),
      h("td", {class: "mono", text: JSON.stringify(b.hard)}), h("td", {class: "mono", text: JSON.stringify(b.soft)}),
      h("td", {class: b.hard_breached ? "error" : "", text: b.hard_breached ? "breached, " + b.tasks_held + " held" : ""})))))] : [];
  return [h("h1", {text: "Overview"}), cards, h("h2", {text: "Finished per minute"}), chart(o.throughput),
    h("h2", {text: "Queues"}), queues, h("h2", {text: "Workers"}), workers, ...budgets];
}

// -- tasks ---------------------------------------------------------------------------

function taskTable(rows, selectable) {
  return h("table", {class: "live", id: "task-table"},
    h("thead", {}, h("tr", {}, selectable ? h("th", {}) : null,
      ["id", "kind", "queue", "state", "attempts", "key", "created", "error"].map((c) => h("th", {text: c})))),
    h("tbody", {}, rows.length ? rows.map((t) => h("tr", {"data-id": t.id},
      selectable ? h("td", {}, h("input", {type: "checkbox", class: "pick", value: t.id, "aria-label": "select " + t.id})) : null,
      h("td", {}, taskLink(t.id)), h("td", {text: t.kind}), h("td", {text: t.queue}),
      h("td", {}, stateBadge(t.state)), h("td", {class: "num", text: t.attempts + "/" + t.max_attempts}),
      h("td", {class: "mono", text: t.key || ""}), h("td", {text: ago(t.created_at_ms)}),
      h("td", {class: "error", text: t.error || ""})))
      : h("tr", {}, h("td", {class: "muted", text: "no tasks match"}))));
}

let filterState = null;

async function tasks(r) {
  const p = new URLSearchParams(r.params);
  const list = await api("tasks?" + p.toString());
  const field = (name, label, input) => h("label", {}, label, input);
  const val = (name) => p.get(name) || "";
  const form = h("form", {class: "filters", onsubmit: (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const el of e.target.elements) if (el.name && el.value) q.set(el.name, el.value);
    location.hash = "#/tasks?" + q.toString();
  }},
    field("queue", "queue", h("input", {name: "queue", value: val("queue"), size: 10})),
    field("kind", "kind", h("input", {name: "kind", value: val("kind"), size: 14})),
    field("state", "state", h("select", {name: "state"}, h("option", {value: "", text: "any"}),
      STATES.map((st) => h("option", {value: st, selected: st === val("state"), text: st})))),
    field("tag", "tag (k or k=v)", h("input", {name: "tag", value: val("tag"), size: 12})),
    field("q", "id or key starts with", h("input", {name: "q", value: val("q"), size: 18})),
    h("button", {type: "submit", text: "Filter"}));
  const focused = document.activeElement && document.activeElement.name;
  const pager = h("div", {class: "pager"},
    p.get("after") ? h("a", {href: "#/tasks?" + (() => { const q = new URLSearchParams(p); q.delete("after"); return q.toString(); })(), text: "« first page"}) : null,
    list.next ? h("a", {id: "next-page", href: "#/tasks?" + (() => { const q = new URLSearchParams(p); q.set("after", list.next); return q.toString(); })(), text: "next page »"}) : null,
    h("span", {class: "muted", text: `${list.tasks.length} shown`}));
  // Keep the form the user is typing in; replace only the results.
  if (filterState && filterState.key === r.params.toString() && focused) {
    filterState.results.replaceChildren(taskTable(list.tasks, false), pager);
    return null;
  }
  const results = h("div", {}, taskTable(list.tasks, false), pager);
  filterState = {key: r.params.toString(), results};
  return [h("h1", {text: "Tasks"}), form, results];
}

async function task(r) {
  const id = r.arg;
  const t = await api("tasks/" + encodeURIComponent(id));
  const kids = t.children ? await api("tasks/" + encodeURIComponent(id) + "/children?limit=20" + (r.params.get("after") ? "&after=" + r.params.get("after") : "")) : null;
  const bar = h("div", {class: "progress"}, h("div", {}));
  bar.firstChild.style.width = Math.max(0, Math.min(100, t.progress || 0)) + "%";
  const actions = h("div", {class: "pager"},
    t.can_cancel ? h("button", {class: "danger", id: "cancel", onclick: () => act("tasks/" + encodeURIComponent(id) + "/cancel", {}, "Cancel task " + id), text: "Cancel"}) : null,
    t.can_retry ? h("button", {id: "retry", onclick: () => act("tasks/" + encodeURIComponent(id) + "/retry", {}, (t.state === "dead_lettered" ? "Replay" : "Retry") + " task " + id), text: t.state === "dead_lettered" ? "Replay" : "Retry"}) : null);
  const kv = (pairs) => h("dl", {class: "kv"}, pairs.filter((x) => x[1] !== null && x[1] !== undefined && x[1] !== "").map(([k, v]) => [h("dt", {text: k}), h("dd", {}, v)]));
  const info = kv([["state", stateBadge(t.state)], ["phase", t.phase], ["kind", t.kind], ["queue", t.queue],
    ["attempts", t.attempts + " of " + t.max_attempts], ["priority", String(t.priority)], ["key", t.key],
    ["tags", Object.keys(t.tags).length ? JSON.stringify(t.tags) : ""], ["parent", t.parent_id ? taskLink(t.parent_id) : null],
    ["created", ago(t.created_at_ms)], ["started", t.started_at_ms ? ago(t.started_at_ms) : null],
    ["finished", t.finished_at_ms ? ago(t.finished_at_ms) : null], ["lease", t.lease_owner ? t.lease_owner + " (epoch " + t.lease_epoch + ")" : null],
    ["cancel requested", t.cancel_requested ? "yes" : null],
    ["progress", h("span", {}, bar, " ", (t.progress === null ? "–" : t.progress.toFixed(0) + "%") + (t.progress_message ? " " + t.progress_message : ""))]]);
  const out = [h("h1", {}, "Task ", h("span", {class: "mono", text: id})), actions, h("div", {class: "grid2 live"},
    h("div", {}, info), h("div", {}, h("h2", {text: "Payload"}), h("pre", {text: json(t.payload)}),
      t.result !== null ? [h("h2", {text: "Result"}), h("pre", {id: "result", text: json(t.result)})] : null))];
  if (t.error) out.push(h("h2", {text: "Last error"}), h("p", {class: "error", id: "error", text: `${t.error.type}: ${t.error.message} (${t.error.category}, after attempt ${t.attempts})`}),
    t.error.traceback ? h("pre", {text: t.error.traceback}) : null);
  out.push(h("h2", {text: "Output frames"}), framesBox(id));
  if (t.children) {
    out.push(h("h2", {text: `Children (${t.children.total})`}),
      h("p", {class: "live"}, Object.entries(t.children.by_state).map(([st, n]) => [stateBadge(st), " " + n + "  "])),
      t.children.top_errors.length ? h("ul", {}, t.children.top_errors.map((e) => h("li", {class: "error", text: `${e.count}× ${e.message}`}))) : null,
      h("table", {class: "live"}, h("thead", {}, h("tr", {}, ["#", "id", "kind", "state", "attempts", "error"].map((c) => h("th", {text: c})))),
        h("tbody", {}, kids.children.map((c) => h("tr", {}, h("td", {class: "num", text: c.seq}), h("td", {}, taskLink(c.id)), h("td", {text: c.kind}),
          h("td", {}, stateBadge(c.state)), h("td", {class: "num", text: c.attempts}), h("td", {class: "error", text: c.error || ""}))))),
      h("div", {class: "pager"}, r.params.get("after") ? h("a", {href: "#/task/" + encodeURIComponent(id), text: "« first"}) : null,
        kids.next ? h("a", {href: "#/task/" + encodeURIComponent(id) + "?after=" + kids.next, text: "next children »"}) : null));
  }
  if (t.upstream.length) out.push(h("h2", {text: "Upstream"}), h("ul", {}, t.upstream.map((u) => h("li", {}, taskLink(u.id), " ", u.node || "", " ", stateBadge(u.state)))));
  if (t.waitpoints.length) out.push(h("h2", {text: "Waitpoints"}), h("table", {id: "waitpoints"},
    h("thead", {}, h("tr", {}, ["key", "id", "state", "created", "due", "delivered", "closed", "signals"].map((c) => h("th", {text: c})))),
    h("tbody", {}, t.waitpoints.map((w) => h("tr", {"data-state": w.state}, h("td", {class: "mono", text: w.key}), h("td", {}, h("code", {text: w.id})),
      h("td", {}, h("span", {class: "state wp-" + w.state, text: w.state})), h("td", {text: ago(w.created_at_ms)}),
      h("td", {text: new Date(w.expires_at_ms).toLocaleString()}), h("td", {text: w.delivered_at_ms ? ago(w.delivered_at_ms) : "–"}),
      h("td", {text: w.closed_reason ? w.closed_reason + (w.closed_at_ms ? " " + ago(w.closed_at_ms) : "") : "–"}),
      h("td", {}, w.signals.map((sg) => h("div", {}, sg.name + " ", h("code", {text: JSON.stringify(sg.payload)})))))))),
    t.waitpoints_more ? h("p", {class: "muted", text: `the first ${t.waitpoints.length} waitpoints are shown`}) : null);
  if (t.signals.length) out.push(h("h2", {text: "Signals that resumed it"}), h("ul", {}, t.signals.map((sg) => h("li", {}, h("code", {text: sg.waitpoint_id}), " " + sg.name + " ", h("code", {text: JSON.stringify(sg.payload)})))));
  if (t.budget) out.push(h("h2", {text: "Budget " + t.budget.id}), h("p", {class: t.budget.hard_breached ? "error" : ""}, "usage " + JSON.stringify(t.budget.usage) + " of hard " + JSON.stringify(t.budget.hard)));
  return out;
}

let framesEl = null;
function framesBox(id) {
  if (frames && framesEl && framesEl.dataset.task === id) return framesEl; // keep the live tail
  framesEl = h("div", {class: "frames", id: "frames", "data-task": id}, h("div", {class: "muted", text: "waiting for frames…"}));
  const box = framesEl;
  frames = new EventSource("api/tasks/" + encodeURIComponent(id) + "/frames");
  frames.addEventListener("frame", (e) => {
    const f = JSON.parse(e.data);
    if (box.firstChild && box.firstChild.classList.contains("muted")) box.firstChild.remove();
    box.append(h("div", {class: "frame", text: `[${f.seq}] ${f.type}: ${f.text}`}));
    box.scrollTop = box.scrollHeight;
  });
  frames.addEventListener("end", () => {
    box.append(h("div", {class: "muted", text: "— attempt ended —"}));
    frames.close();
  });
  return box;
}

// -- workflows -----------------------------------------------------------------------

async function workflows() {
  const w = await api("workflows?limit=50");
  return [h("h1", {text: "Workflow runs"}), h("table", {class: "live"},
    h("thead", {}, h("tr", {}, ["run", "name", "state", "nodes", "by state", "created"].map((c) => h("th", {text: c})))),
    h("tbody", {}, w.runs.length ? w.runs.map((run) => h("tr", {},
      h("td", {}, h("a", {href: "#/workflow/" + encodeURIComponent(run.id), class: "mono", text: run.id})),
      h("td", {text: run.name}), h("td", {}, stateBadge(run.state)), h("td", {class: "num", text: run.total}),
      h("td", {}, Object.entries(run.by_state).map(([st, n]) => [stateBadge(st), " " + n + " "])), h("td", {text: ago(run.created_at_ms)})))
      : h("tr", {}, h("td", {class: "muted", text: "no workflow runs"}))))];
}

const COLORS = {completed: "#1f8a4c", running: "#2b6cb0", failed: "#c0392b", dead_lettered: "#c0392b", expired: "#c0392b",
  ready: "#b7791f", scheduled: "#b7791f", blocked: "#8a94a3", skipped: "#b9c2cc", cancelled: "#b9c2cc"};

function graph(nodes) {
  // Layered by depth: one column per layer, nodes stacked in insertion order.
  const layers = [];
  for (const n of nodes) (layers[n.depth] = layers[n.depth] || []).push(n);
  const NW = 150, NH = 34, GX = 60, GY = 14;
  const pos = {};
  layers.forEach((layer, d) => layer.forEach((n, i) => { pos[n.node] = {x: 10 + d * (NW + GX), y: 10 + i * (NH + GY)}; }));
  const W = 20 + layers.length * (NW + GX), H = 20 + Math.max(...layers.map((l) => l.length)) * (NH + GY);
  const edges = [], boxes = [];
  for (const n of nodes) for (const u of n.upstream) if (pos[u]) {
    const a = pos[u], b = pos[n.node];
    edges.push(s("path", {d: `M${a.x + NW},${a.y + NH / 2} C${a.x + NW + GX / 2},${a.y + NH / 2} ${b.x - GX / 2},${b.y + NH / 2} ${b.x},${b.y + NH / 2}`, fill: "none", stroke: "#9aa5b1"}));
  }
  for (const n of nodes) {
    const p = pos[n.node], a = s("a", {href: "#/task/" + encodeURIComponent(n.task_id)},
      s("rect", {x: p.x, y: p.y, width: NW, height: NH, rx: 6, fill: "#fff", stroke: COLORS[n.state] || "#8a94a3", "stroke-width": 2}),
      s("text", {x: p.x + 8, y: p.y + 14, "font-size": 12, fill: "#1d232b"}, n.node.slice(0, 20)),
      s("text", {x: p.x + 8, y: p.y + 28, "font-size": 10, fill: COLORS[n.state] || "#6a7380"}, n.state),
      s("title", {}, `${n.node} (${n.kind}): ${n.state}` + (n.error ? " — " + n.error : "")));
    a.setAttribute("data-node", n.node);
    a.setAttribute("data-state", n.state);
    boxes.push(a);
  }
  return s("svg", {class: "graph live", width: W, height: H, viewBox: `0 0 ${W} ${H}`}, edges, boxes);
}

async function workflow(r) {
  const run = await api("workflows/" + encodeURIComponent(r.arg));
  return [h("h1", {}, "Workflow ", h("span", {text: run.name}), " ", h("span", {class: "mono muted", text: run.id})),
    h("p", {}, stateBadge(run.state), " ", Object.entries(run.by_state).map(([st, n]) => st + ": " + n).join(", ")),
    graph(run.nodes)];
}

// -- dead letters --------------------------------------------------------------------

async function dead(r) {
  const list = await api("dead-letters?" + r.params.toString());
  const table = taskTable(list.tasks, true);
  const replay = async () => {
    const ids = [...table.querySelectorAll("input.pick:checked")].map((el) => el.value);
    if (!ids.length) return;
    await act("dead-letters/replay", {ids}, `Replay ${ids.length} dead letter(s)`);
  };
  const all = h("button", {id: "select-all", onclick: () => table.querySelectorAll("input.pick").forEach((el) => { el.checked = true; }), text: "Select all"});
  return [h("h1", {text: "Dead letters"}),
    h("div", {class: "pager"}, all, h("button", {id: "replay-selected", onclick: replay, text: "Replay selected"})),
    table,
    h("div", {class: "pager"}, list.next ? h("a", {href: "#/dead?after=" + encodeURIComponent(list.next), text: "next page »"}) : null)];
}

// The dead-letter page keeps ticked boxes: it is not re-rendered while boxes are ticked.
const plainRefresh = refresh;
refresh = async function () {
  if (route().name === "dead" && view.querySelector("input.pick:checked")) return;
  if (route().name === "task" && document.getElementById("confirm").open) return;
  return plainRefresh();
};

window.addEventListener("hashchange", navigate);
navigate();
