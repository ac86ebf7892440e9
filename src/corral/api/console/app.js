// Corral's operator console: plain JavaScript, no build step. Everything it
// shows comes from the documented API (docs/http-api.md); the token lives in
// this tab's sessionStorage, never in a URL.
"use strict";

const ROW = 28;                       // px per fleet row (the list is virtualised)
const state = {
  token: sessionStorage.getItem("corral.token"),
  who: null, kind: "board", kinds: [], machines: new Map(), order: [], definitions: {},
  filter: "", stateFilter: null, lastEventId: null, stream: null, page: null,
};
const $ = (id) => document.getElementById(id);
const esc = (text) => String(text ?? "").replace(/[&<>"']/g,
  (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));

async function api(path, options = {}) {
  const headers = {Authorization: `Bearer ${state.token}`, ...(options.headers || {})};
  if (options.body) headers["Content-Type"] = "application/json";
  const answer = await fetch(path, {...options, headers});
  const body = answer.headers.get("content-type")?.includes("json") ? await answer.json() : null;
  if (answer.status === 401) { logout("The token was refused: log in again."); throw new Error("401"); }
  if (!answer.ok) throw new Error(body?.message || `${answer.status} ${answer.statusText}`);
  return {body, headers: answer.headers};
}

// ------------------------------------------------------------------ login

function showLogin(message) {
  $("login").hidden = false; $("view").hidden = true; $("logout").hidden = true;
  $("who").textContent = ""; $("login-error").textContent = message || "";
}

function logout(message) {
  sessionStorage.removeItem("corral.token");
  state.token = null; state.who = null;
  if (state.stream) state.stream.abort();
  showLogin(message);
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  state.token = $("token").value.trim();
  try {
    await start();
    sessionStorage.setItem("corral.token", state.token);
    $("token").value = "";
  } catch (error) {
    if (error.message !== "401") showLogin(error.message);
  }
});
$("logout").addEventListener("click", () => logout());

async function start() {
  state.who = (await api("/api/v1/whoami")).body;
  $("login").hidden = true; $("view").hidden = false; $("logout").hidden = false;
  $("who").textContent = `${state.who.name} (${state.who.role})`;
  // The kinds this Corral loaded (statemachines/), as the API lists them.
  state.kinds = (await api("/api/v1/definitions")).body.map((d) => d.kind);
  $("kinds").innerHTML = state.kinds.map((k) =>
    `<a href="#/${esc(k)}s" data-kind="${esc(k)}">${esc(k)}s</a>`).join("")
    + `<a href="#/diagram/${esc(state.kind)}">diagram</a>`;
  for (const kind of state.kinds) {
    state.definitions[kind] = (await api(`/api/v1/definitions/${encodeURIComponent(kind)}`)).body;
  }
  webhooks();
  follow();
  route();
}

const canOperate = () => state.who && state.who.role !== "viewer";
const isAdmin = () => state.who && state.who.role === "admin";
const failedStates = (kind) => new Set((state.definitions[kind]?.states || [])
  .filter((s) => s.failed).map((s) => s.name));

// Failing webhook subscriptions, in a banner (looked at once a minute).
async function webhooks() {
  try {
    const failing = (await api("/api/v1/webhooks")).body.filter((h) => h.status === "failing");
    $("banner").hidden = !failing.length;
    $("banner").textContent = failing.map((h) =>
      `webhook ${h.name} is failing (${h.failures} in a row): ${h.last_error}`).join("; ");
  } catch (error) { /* shown on the next look */ }
  setTimeout(webhooks, 60000);
}

// ------------------------------------------------------------------ routing

window.addEventListener("hashchange", route);

async function route() {
  if (!state.who) return;
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  document.querySelectorAll("#kinds a").forEach((a) =>
    a.classList.toggle("on", a.dataset.kind === state.kind));
  try {
    if (parts[0] === "diagram") return await showDiagram(parts[1] || "board");
    if (state.kinds.includes("lease") && parts[0] === "leases") return await showLeases();
    if (state.kinds.includes("lease") && parts[0] === "lease" && parts[1]) {
      return await showLease(parts[1]);
    }
    if (state.kinds.includes(parts[0]) && parts[1]) return await showMachine(parts[0], parts[1]);
    const kind = state.kinds.find((k) => `${k}s` === parts[0]) || state.kinds[0] || "board";
    return await showFleet(kind);
  } catch (error) {
    if (error.message !== "401") $("view").innerHTML = `<p class="error">${esc(error.message)}</p>`;
  }
}

// ------------------------------------------------------------------ the fleet

async function loadFleet(kind) {
  state.kind = kind; state.machines = new Map();
  let after = null;
  for (;;) {
    const query = `?limit=1000${after ? `&after=${encodeURIComponent(after)}` : ""}`;
    const {body} = await api(`/api/v1/${kind}s${query}`);
    for (const doc of body) state.machines.set(doc.name, doc);
    if (body.length < 1000) break;
    after = body[body.length - 1].name;
  }
}

async function showFleet(kind) {
  state.page = {type: "fleet", kind};
  await loadFleet(kind);
  document.querySelectorAll("#kinds a").forEach((a) =>
    a.classList.toggle("on", a.dataset.kind === kind));
  $("view").innerHTML = `
    <div class="card">
      <div class="toolbar"><strong id="total"></strong>
        <input id="search" placeholder="filter by name" value="${esc(state.filter)}"></div>
      <div id="chips" class="chips"></div>
    </div>
    <div id="grid" class="grid"><div class="row head"><span>name</span><span>state</span>
      <span>entered</span><span>counters</span></div><div id="rows"></div></div>`;
  $("search").addEventListener("input", (e) => { state.filter = e.target.value; renderFleet(); });
  $("grid").addEventListener("scroll", () => renderRows());
  renderFleet();
}

function renderFleet() {
  if (state.page?.type !== "fleet") return;
  const failed = failedStates(state.kind);
  const counts = new Map();
  for (const doc of state.machines.values()) counts.set(doc.state, (counts.get(doc.state) || 0) + 1);
  const chips = [...counts.entries()].sort((a, b) =>
    (failed.has(b[0]) - failed.has(a[0])) || (b[1] - a[1]) || a[0].localeCompare(b[0]));
  $("chips").innerHTML = chips.map(([name, n]) =>
    `<span class="chip${failed.has(name) ? " failed" : ""}${state.stateFilter === name ? " on" : ""}"
      data-state="${esc(name)}">${esc(name)} ${n}</span>`).join("");
  $("chips").querySelectorAll(".chip").forEach((chip) => chip.addEventListener("click", () => {
    state.stateFilter = state.stateFilter === chip.dataset.state ? null : chip.dataset.state;
    renderFleet();
  }));
  const needle = state.filter.toLowerCase();
  state.order = [...state.machines.values()].filter((d) =>
    (!needle || d.name.toLowerCase().includes(needle)) &&
    (!state.stateFilter || d.state === state.stateFilter))
    .sort((a, b) => (failed.has(b.state) - failed.has(a.state)) || a.name.localeCompare(b.name));
  $("total").textContent = `${state.order.length} of ${state.machines.size} ${state.kind}s`;
  $("rows").style.height = `${(state.order.length + 1) * ROW}px`;
  renderRows();
}

function renderRows() {
  const grid = $("grid");
  if (!grid) return;
  const first = Math.max(0, Math.floor(grid.scrollTop / ROW) - 5);
  const last = Math.min(state.order.length, first + Math.ceil(grid.clientHeight / ROW) + 10);
  const failed = failedStates(state.kind);
  const html = [];
  for (let i = first; i < last; i++) {
    const d = state.order[i];
    const counters = Object.entries(d.counters || {}).map(([k, v]) => `${k}=${v}`).join(" ");
    html.push(`<div class="row${failed.has(d.state) ? " failed" : ""}"
      data-name="${esc(d.name)}"><a href="#/${state.kind}/${encodeURIComponent(d.name)}">${esc(d.name)}</a>
      <span class="state">${esc(d.state)}</span><span>${ago(d.state_entered_at)}</span>
      <span class="muted">${esc(counters)}</span></div>`);
  }
  const rows = $("rows");
  rows.innerHTML = html.join("");
  // Placed through the CSSOM: the page's Content-Security-Policy refuses
  // style attributes in markup.
  [...rows.children].forEach((row, k) => { row.style.top = `${(first + k + 1) * ROW}px`; });
}

function ago(moment) {
  const seconds = Math.max(0, (Date.now() - Date.parse(moment)) / 1000);
  if (seconds < 120) return `${Math.round(seconds)} s ago`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

// ------------------------------------------------------------------ one machine

async function showMachine(kind, name) {
  state.page = {type: "machine", kind, name};
  const path = `/api/v1/${kind}s/${encodeURIComponent(name)}`;
  const [explain, history] = await Promise.all([api(`${path}/explain`), api(`${path}/history?limit=50`)]);
  const e = explain.body;
  const timeout = e.timeout ? `${e.timeout.seconds ?? e.timeout.deadline_var} s, then
    ${esc(e.timeout.then)}${e.timeout.remaining_seconds != null ? ` (in ${Math.round(e.timeout.remaining_seconds)} s)` : ""}` : "none";
  const counters = e.counters.filter((c) => c.value || c.this_state).map((c) =>
    `<tr><td>${esc(c.name)}${c.this_state ? " (this state)" : ""}</td><td>${c.value} / ${c.max}</td>
      <td>then ${esc(c.failure)}</td></tr>`).join("");
  const operations = [...e.waiting_operations, ...e.last_operations].map((op) =>
    `<tr><td>${esc(op.kind)} #${op.id}</td><td>${esc(op.status)}</td><td>${op.attempts}</td>
      <td>${esc(op.error || JSON.stringify(op.result) || "")}</td></tr>`).join("");
  $("view").innerHTML = `
    <div class="card" id="explain">
      <h1>${esc(kind)} ${esc(name)}: <span class="${e.failed ? "state-failed" : ""}" id="machine-state">${esc(e.state)}</span></h1>
      <p class="summary" id="summary">${esc(e.summary)}</p>
      <table><tr><th>timeout</th><td>${timeout}</td></tr>
        <tr><th>in state</th><td>${Math.round(e.seconds_in_state)} s</td></tr>
        ${e.holder ? `<tr><th>holder</th><td id="holder"><a href="#/lease/${encodeURIComponent(e.holder.lease)}">${esc(e.holder.lease)}</a> (${esc(e.holder.owner)},
          ${esc(e.holder.state)}${e.holder.expires_at ? `, until ${esc(e.holder.expires_at)}` : ""})</td></tr>` : ""}</table>
      ${counters ? `<h3>counters</h3><table>${counters}</table>` : ""}
      ${operations ? `<h3>operations</h3><table><tr><th>operation</th><th>status</th>
        <th>attempts</th><th>result</th></tr>${operations}</table>` : ""}
    </div>
    ${canOperate() ? actions(kind, name, e) : ""}
    ${kind === "board" ? `<div class="card" id="console"><div class="toolbar"><h3>console</h3>
      <select id="console-attempt"></select><span class="muted" id="console-info"></span></div>
      <pre id="console-text" class="console"></pre></div>` : ""}
    <div class="card"><h3>history</h3><table id="history"><tr><th>id</th><th>at</th><th>event</th>
      <th>from</th><th>to</th><th>source</th><th>actor</th><th>reason</th></tr></table>
      <button id="older" hidden>older</button></div>`;
  addHistory(history.body);
  if (canOperate()) wireActions(kind, name, e);
  if (kind === "board") showConsole(name);
}

// The board's captured serial console (docs/console-capture.md): the newest
// boot attempt, followed every 2 s while this page is open, or an earlier one.
async function showConsole(name) {
  const page = state.page;
  const path = `/api/v1/boards/${encodeURIComponent(name)}/console`;
  const here = () => state.page === page;
  const view = {attempt: null, offset: 0, newest: true};
  const select = $("console-attempt"), text = $("console-text"), info = $("console-info");
  const attempts = (list) => {
    select.innerHTML = list.map((a) => `<option value="${a.attempt}">attempt ${a.attempt}
      (${esc(a.started_at.slice(0, 19))})</option>`).join("");
    select.hidden = !list.length;
  };
  const load = async () => {
    if (!here()) return;
    try {
      if (view.newest) {
        const {body} = await api(`${path}?limit=1`);
        if (!here()) return;
        info.textContent = body.capture ? (body.capture.owner ? `captured by ${body.capture.owner}`
          : "waiting for a worker to capture it") : "no console: in the inventory";
        const last = body.attempts.at(-1);
        if (last && last.attempt !== view.attempt) {
          attempts(body.attempts);
          Object.assign(view, {attempt: last.attempt, offset: 0});
          text.textContent = "";
        }
        select.value = view.attempt ?? "";
      }
      if (view.attempt != null) {
        const {body} = await api(`${path}/${view.attempt}?offset=${view.offset}`);
        if (!here()) return;
        text.textContent += body.text;
        view.offset = body.next_offset;
      } else if (!text.textContent) {
        text.textContent = "(nothing captured yet)";
      }
    } catch (error) {
      if (here()) info.textContent = error.message;
    }
    if (view.newest && here()) setTimeout(load, 2000);
  };
  select.onchange = () => {
    const chosen = Number(select.value);
    const newest = chosen === Number(select.options[select.options.length - 1]?.value);
    const restart = !view.newest && newest;
    Object.assign(view, {attempt: chosen, offset: 0, newest});
    text.textContent = "";
    if (restart || !newest) load();
  };
  load();
}

function addHistory(page) {
  $("history").insertAdjacentHTML("beforeend", page.entries.map((h) =>
    `<tr><td>${h.id}</td><td>${esc(h.at.slice(0, 19))}</td><td>${esc(h.event)}</td>
      <td>${esc(h.from_state)}</td><td>${esc(h.to_state)}</td><td>${esc(h.source)}</td>
      <td>${esc(h.actor)}</td><td>${esc(h.reason)}</td></tr>`).join(""));
  const older = $("older");
  older.hidden = !page.next_before;
  older.onclick = async () => {
    const {kind, name} = state.page;
    addHistory((await api(`/api/v1/${kind}s/${encodeURIComponent(name)}/history?limit=50&before=${page.next_before}`)).body);
  };
}

function actions(kind, name, e) {
  const states = state.definitions[kind].states.map((s) => s.name)
    .filter((s) => isAdmin() || s !== "retired");
  // A board's health check has its own route (burn-in loops, docs/health.md).
  const checkable = kind === "board" && e.allowed_events.includes("check");
  const events = e.allowed_events.filter((ev) => !(checkable && ev === "check")).map((ev) =>
    `<button class="fire" data-event="${esc(ev)}">${esc(ev)}</button>`).join("");
  const check = checkable ? `<form id="check">
      <label>burn-in: <input id="check-loop" type="number" min="0" max="1000" value="0">
        more checks</label>
      <input id="check-reason" placeholder="reason (optional)">
      <button type="submit">health check</button></form>` : "";
  return `<div class="card actions" id="actions"><h3>actions</h3>
    <div>${events || (checkable ? "" : '<span class="muted">no event you may fire here</span>')}</div>
    ${check}
    <form id="force"><select id="force-state">${states.map((s) =>
      `<option>${esc(s)}</option>`).join("")}</select>
      <input id="force-reason" placeholder="reason (required)" required>
      <label><input type="checkbox" id="force-if" checked> only if still ${esc(e.state)}</label>
      <button type="submit">force state</button></form>
    <p id="action-result" class="muted"></p></div>`;
}

function wireActions(kind, name, e) {
  const path = `/api/v1/${kind}s/${encodeURIComponent(name)}`;
  const report = (text, bad) => { $("action-result").textContent = text;
    $("action-result").className = bad ? "error" : "muted"; };
  document.querySelectorAll("button.fire").forEach((button) => button.addEventListener("click",
    async () => {
      const reason = prompt(`Reason for ${button.dataset.event}?`) || null;
      try {
        const {body} = await api(`${path}/fire`, {method: "POST",
          body: JSON.stringify({event: button.dataset.event, reason})});
        report(`${body.from_state} -> ${body.state}`);
      } catch (error) { report(error.message, true); }
    }));
  if ($("check")) $("check").addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {loop: Number($("check-loop").value) || 0};
    if ($("check-reason").value) body.reason = $("check-reason").value;
    try {
      const answer = await api(`${path}/check`, {method: "POST", body: JSON.stringify(body)});
      report(`${answer.body.from_state} -> ${answer.body.state} (a health check is queued)`);
    } catch (error) { report(error.message, true); }
  });
  $("force").addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {state: $("force-state").value, reason: $("force-reason").value};
    if ($("force-if").checked) body.if_state = e.state;
    try {
      const answer = await api(`${path}/force-state`, {method: "POST", body: JSON.stringify(body)});
      report(`${answer.body.from_state} -> ${answer.body.state}`);
    } catch (error) { report(error.message, true); }
  });
}

// ------------------------------------------------------------------ leases

// Durations as an operator reads them: 45 s, 12 min, 3.5 h, 4 d.
function span(seconds) {
  const s = Math.abs(seconds);
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${Math.round(s / 86400)} d`;
}

// A moment to come ("in 12 min") or gone ("3 s late"), kept current by tick().
function until(moment, late = "ago") {
  if (!moment) return "";
  const seconds = (Date.parse(moment) - Date.now()) / 1000;
  return seconds >= 0 ? `in ${span(seconds)}` : `${span(seconds)} ${late}`;
}

function timed(moment, kind, late) {
  if (!moment) return '<span class="muted">none</span>';
  const text = kind === "since" ? span((Date.now() - Date.parse(moment)) / 1000) : until(moment, late);
  return `<span class="timed" data-${kind}="${esc(moment)}" data-late="${esc(late || "ago")}"
    title="${esc(moment)}">${esc(text)}</span>`;
}

// Rewrites the relative times of the page every few seconds (no request).
function tick() {
  document.querySelectorAll(".timed").forEach((el) => {
    if (el.dataset.since) el.textContent = span((Date.now() - Date.parse(el.dataset.since)) / 1000);
    else if (el.dataset.until) {
      el.textContent = until(el.dataset.until, el.dataset.late);
      el.classList.toggle("late", Date.parse(el.dataset.until) < Date.now());
    }
  });
}
setInterval(tick, 5000);

// A moment to the second, in the server's zone (UTC), the whole of it on hover.
const when = (moment) => moment
  ? `<span title="${esc(moment)}">${esc(moment.slice(0, 19).replace("T", " "))}</span>` : "";
const leaseLink = (id) => `<a href="#/lease/${encodeURIComponent(id)}">${esc(id)}</a>`;
const boardLinks = (boards, none = "none yet") => boards.length ? boards.map((b) =>
  `<a href="#/board/${encodeURIComponent(b)}">${esc(b)}</a>`).join(", ") : `<span class="muted">${none}</span>`;
const whose = (l) => `${esc(l.owner)}${l.project ? ` <span class="muted">for ${esc(l.project)}</span>` : ""}`;

function asks(l) {
  const what = l.board ? `board <code>${esc(l.board)}</code>`
    : `${l.count} &times; <code>${esc(l.selector || "any board")}</code>`;
  return what + (l.release ? ` on <code>${esc(l.release)}</code>` : "");
}

// A heartbeat's due time: the last one plus the interval.
function heartbeatDue(l) {
  if (!l.heartbeat) return '<span class="muted">none</span>';
  if (!l.heartbeat_at || l.state !== "active") return `every ${l.heartbeat} s`;
  const due = new Date(Date.parse(l.heartbeat_at) + l.heartbeat * 1000).toISOString();
  return `every ${l.heartbeat} s, due ${timed(due, "until", "late")}`;
}

// Reload the leases page or a lease's page soon (the stream says something
// changed; several changes in a row make one reload).
function refreshLeases(delay) {
  clearTimeout(state.refresh);
  state.refresh = setTimeout(() => {
    const page = state.page;
    if (page?.type === "leases") showLeases().catch(() => {});
    else if (page?.type === "lease") showLease(page.name).catch(() => {});
  }, delay);
}

// While the event stream is away (it reconnects), the lease pages look
// again every 5 s.
setInterval(() => {
  if (["leases", "lease"].includes(state.page?.type) && !$("live").classList.contains("on")
      && !$("revoke-reason")?.value) refreshLeases(0);
}, 5000);

const HOLDING_ORDER = {preparing: 0, active: 1, returning: 2};

async function showLeases() {
  const [queue, preparing, active, returning, ended] = await Promise.all([
    api("/api/v1/leases/queue?limit=500"), api("/api/v1/leases?state=preparing&limit=1000"),
    api("/api/v1/leases?state=active&limit=1000"), api("/api/v1/leases?state=returning&limit=1000"),
    api("/api/v1/leases?ended=true&limit=20")]);
  state.page = {type: "leases"};
  document.querySelectorAll("#kinds a").forEach((a) =>
    a.classList.toggle("on", a.dataset.kind === "lease"));
  const q = queue.body;
  const holding = [...preparing.body, ...active.body, ...returning.body].sort((a, b) =>
    (HOLDING_ORDER[a.state] - HOLDING_ORDER[b.state]) ||
    String(a.expires_at || "").localeCompare(String(b.expires_at || "")) || a.id.localeCompare(b.id));
  const classes = q.classes.map((c) => `
    <h3 class="class">priority ${c.priority} <span class="muted">(${c.queued} queued)</span></h3>
    <table class="leases" data-priority="${c.priority}"><tr><th>#</th><th>lease</th><th>owner</th>
      <th>asks</th><th>waited</th><th>share used</th><th>purpose</th><th></th></tr>
    ${c.leases.map((l) => `<tr data-lease="${esc(l.id)}"><td>${l.place}</td><td>${leaseLink(l.id)}</td>
      <td>${whose(l)}</td><td>${asks(l)}</td><td>${timed(l.requested_at, "since")}</td>
      <td>${span(l.share_board_seconds)}</td><td class="purpose">${esc(l.purpose)}</td>
      <td>${l.over_quota ? '<span class="tag late" title="its owner holds too many boards">over quota</span>' : ""}
        ${l.reserving ? '<span class="tag" title="the boards it could use are kept for it">reserving</span>' : ""}</td>
    </tr>`).join("")}</table>`).join("");
  const holdingRows = holding.map((l) => `<tr data-lease="${esc(l.id)}"><td>${leaseLink(l.id)}</td>
    <td class="state">${esc(l.state)}</td><td>${whose(l)}</td><td>${boardLinks(l.boards)}</td>
    <td>${l.state === "active" ? timed(l.expires_at, "until", "late") : '<span class="muted">not yet</span>'}</td>
    <td>${heartbeatDue(l)}</td><td class="purpose">${esc(l.purpose)}</td></tr>`).join("");
  const endedRows = ended.body.map((l) => `<tr data-lease="${esc(l.id)}"><td>${leaseLink(l.id)}</td>
    <td class="state">${esc(l.state)}</td><td>${esc(l.ended_by)}</td><td>${whose(l)}</td>
    <td>${boardLinks(l.boards, "none")}</td><td>${l.ended_at ? `${timed(l.ended_at, "since")} ago` : ""}</td>
    <td class="purpose">${esc(l.purpose)}</td></tr>`).join("");
  $("view").innerHTML = `
    <div class="card"><div class="toolbar"><h1>Leases</h1>
      <span class="muted" id="lease-totals">${q.queued} queued, ${holding.length} holding or returning</span>
      <a href="#/diagram/lease">diagram</a></div></div>
    <div class="card" id="queue"><h2>queue</h2>
      <p class="muted">In the order the scheduler serves it: priority classes, then fair share
        (the board-time each share used lately), then age.${q.shown < q.queued ? ` The first ${q.shown} of ${q.queued}.` : ""}</p>
      ${classes || '<p class="muted">Nothing is queued.</p>'}</div>
    <div class="card" id="holding"><h2>holding</h2>
      ${holdingRows ? `<table class="leases"><tr><th>lease</th><th>state</th><th>owner</th><th>boards</th>
        <th>expires</th><th>heartbeat</th><th>purpose</th></tr>${holdingRows}</table>`
        : '<p class="muted">No lease holds boards.</p>'}</div>
    <div class="card" id="ended"><h2>recently ended</h2>
      ${endedRows ? `<table class="leases"><tr><th>lease</th><th>state</th><th>how</th><th>owner</th>
        <th>boards</th><th>ended</th><th>purpose</th></tr>${endedRows}</table>`
        : '<p class="muted">None yet.</p>'}</div>`;
  tick();
}

async function showLease(name) {
  const path = `/api/v1/leases/${encodeURIComponent(name)}`;
  const [shown, explained, history] = await Promise.all([
    api(path), api(`${path}/explain`), api(`${path}/history?limit=50`)]);
  const l = shown.body, e = explained.body;
  state.page = {type: "lease", kind: "lease", name, queued: l.state === "queued"};
  document.querySelectorAll("#kinds a").forEach((a) =>
    a.classList.toggle("on", a.dataset.kind === "lease"));
  const ended = !["requested", "queued", "preparing", "active"].includes(l.state);
  const rows = [
    ["owner", whose(l)], ["asks", `${asks(l)} for ${span(l.duration)}`],
    ["priority", String(l.priority)], ["purpose", `<span class="purpose">${esc(l.purpose)}</span>`],
    ["boards", boardLinks(l.boards)],
    ["requested", `${when(l.requested_at)} (${timed(l.requested_at, "since")} ago)`],
  ];
  if (l.state === "queued") rows.push(["wait until", `${when(l.wait_until)} (${timed(l.wait_until, "until", "late")})`]);
  if (l.activated_at) rows.push(["activated", when(l.activated_at)]);
  if (l.state === "active") {
    rows.push(["expires", `${when(l.expires_at)} (${timed(l.expires_at, "until", "late")})`]);
    rows.push(["heartbeat", heartbeatDue(l)]);
  }
  if (l.ended_by) rows.push(["ended", `${esc(l.ended_by)}${l.ended_at ? ` at ${when(l.ended_at)}` : ""}`]);
  rows.push(["on return", esc(l.on_return)]);
  $("view").innerHTML = `
    <div class="card" id="explain">
      <h1>lease ${esc(name)}: <span id="lease-state" class="${l.state === "failed" ? "state-failed" : ""}">${esc(l.state)}</span></h1>
      <p class="summary" id="why">${esc(e.why)}</p>
      <table>${rows.map(([k, v]) => `<tr><th>${k}</th><td>${v}</td></tr>`).join("")}</table>
      ${e.position ? queuedDetail(e) : ""}
    </div>
    ${!ended && (isAdmin() || state.who.name === l.owner) ? leaseActions(l) : ""}
    <div class="card"><h3>history</h3><table id="history"><tr><th>id</th><th>at</th><th>event</th>
      <th>from</th><th>to</th><th>source</th><th>actor</th><th>reason</th></tr></table>
      <button id="older" hidden>older</button></div>`;
  addHistory(history.body);
  if (!ended) wireLeaseActions(l);
  tick();
}

// What explain says of a queued lease: its place, the census of the boards
// it could use, who holds them and until when, the quotas it hits.
function queuedDetail(e) {
  const p = e.position;
  const census = [`${e.matching} match`, `${e.free} free`, `${e.leased} leased`];
  const notReady = Object.entries(e.not_ready).map(([s, n]) => `${esc(s)} ${n}`).join(", ");
  if (notReady) census.push(`not ready: ${notReady}`);
  const ruledOut = Object.entries(e.ruled_out).map(([term, n]) =>
    `<tr><td><code>${esc(term)}</code></td><td>${n} ruled out</td></tr>`).join("");
  const blocking = e.blocking.map((b) => `<tr><td>${leaseLink(b.lease)}</td><td>${esc(b.owner)}</td>
    <td>${esc(b.state)}</td><td>${b.boards}</td><td>${b.expires_at ? `${when(b.expires_at)}
    (${timed(b.expires_at, "until", "late")})` : ""}</td></tr>`).join("");
  return `<h3>in the queue</h3>
    <p id="position">place ${p.place} of ${p.of} in priority ${p.class}; share
      <strong>${esc(p.share)}</strong> used ${span(p.share_board_seconds)} of board-time lately</p>
    <p id="census">${census.join("; ")}</p>
    ${ruledOut ? `<table id="ruled-out">${ruledOut}</table>` : ""}
    ${blocking ? `<h3>held by</h3><table id="blocking"><tr><th>lease</th><th>owner</th><th>state</th>
      <th>boards</th><th>expires</th></tr>${blocking}</table>` : ""}
    ${e.estimate ? `<p id="estimate">enough boards free up by ${when(e.estimate)}
      (${timed(e.estimate, "until", "ago")}) if their holders keep them to the end</p>` : ""}
    ${e.quota.length ? `<p class="error" id="quota">${e.quota.map(esc).join("; ")}</p>` : ""}`;
}

function leaseActions(l) {
  return `<div class="card actions" id="actions"><h3>actions</h3>
    ${state.who.name === l.owner || isAdmin() ? `<button id="release">${l.state === "queued" ? "cancel" : "release"}</button>` : ""}
    ${isAdmin() ? `<form id="revoke"><input id="revoke-reason" placeholder="reason (required)" required>
      <label><input type="checkbox" id="revoke-if" checked> only if still ${esc(l.state)}</label>
      <button type="submit">revoke</button></form>` : ""}
    <p id="action-result" class="muted"></p></div>`;
}

function wireLeaseActions(l) {
  const path = `/api/v1/leases/${encodeURIComponent(l.id)}`;
  const report = (text, bad) => { $("action-result").textContent = text;
    $("action-result").className = bad ? "error" : "muted"; };
  $("release")?.addEventListener("click", async () => {
    if (!confirm(`Give ${l.id} back?`)) return;
    try {
      const {body} = await api(`${path}/release`, {method: "POST",
        body: JSON.stringify({reason: `released from the console by ${state.who.name}`})});
      report(`${l.id} is ${body.state}`);
    } catch (error) { report(error.message, true); }
  });
  $("revoke")?.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {reason: $("revoke-reason").value};
    if ($("revoke-if").checked) body.if_state = l.state;
    try {
      const answer = await api(`${path}/revoke`, {method: "POST", body: JSON.stringify(body)});
      $("revoke-reason").value = "";
      report(`${l.id} is ${answer.body.state}`);
    } catch (error) { report(error.message, true); }
  });
}

// ------------------------------------------------------------------ diagrams

async function showDiagram(kind) {
  state.page = {type: "diagram", kind};
  const d = (await api(`/api/v1/definitions/${kind}`)).body;
  state.definitions[kind] = d;
  // Layers by distance from the initial state; failed states in the last.
  const depth = new Map([[d.initial, 0]]);
  const queue = [d.initial];
  while (queue.length) {
    const here = queue.shift();
    for (const t of d.transitions) {
      if (t.dest && (t.sources.includes(here) || t.sources.includes("*")) && !depth.has(t.dest)) {
        depth.set(t.dest, depth.get(here) + 1); queue.push(t.dest);
      }
    }
  }
  const maxDepth = Math.max(...depth.values()) + 1;
  const layers = new Map();
  for (const s of d.states) {
    const layer = s.failed ? maxDepth : (depth.get(s.name) ?? maxDepth);
    if (!layers.has(layer)) layers.set(layer, []);
    layers.get(layer).push(s);
  }
  // A layer wider than PER_ROW states wraps onto further rows.
  const W = 170, H = 46, GX = 40, GY = 60, PER_ROW = 5, pos = new Map();
  let width = 0, row = 0;
  for (const layer of [...layers.keys()].sort((a, b) => a - b)) {
    const members = layers.get(layer);
    for (let i = 0; i < members.length; i += PER_ROW) {
      members.slice(i, i + PER_ROW).forEach((s, col) =>
        pos.set(s.name, {x: 10 + col * (W + GX), y: 10 + row * (H + GY)}));
      width = Math.max(width, Math.min(members.length, PER_ROW) * (W + GX));
      row += 1;
    }
  }
  const height = row * (H + GY) + 20;
  const edges = [];
  for (const t of d.transitions) {
    if (!t.dest) continue;
    const sources = t.sources.includes("*") ? [] : t.sources;
    for (const source of sources) {
      const a = pos.get(source), b = pos.get(t.dest);
      if (!a || !b || source === t.dest) continue;
      edges.push(`<line class="edge" x1="${a.x + W / 2}" y1="${a.y + H}" x2="${b.x + W / 2}" y2="${b.y}"><title>${esc(t.trigger)}</title></line>`);
    }
  }
  const nodes = d.states.map((s) => { const p = pos.get(s.name);
    return `<g class="node${s.failed ? " failed" : ""}${s.machines ? " busy" : ""}" transform="translate(${p.x},${p.y})">
      <rect width="${W}" height="${H}" rx="6"></rect><text x="8" y="18">${esc(s.name)}</text>
      <text x="8" y="36" class="count">${s.machines} ${s.machines === 1 ? kind : kind + "s"}</text></g>`; });
  $("view").innerHTML = `<div class="card"><h1>${esc(kind)} states</h1>
    <p class="muted">${esc(d.description)}</p>
    <svg id="diagram" width="${width}" height="${height}">${edges.join("")}${nodes.join("")}</svg>
    <h3>transitions</h3><table>${d.transitions.map((t) => `<tr><td>${esc(t.trigger)}</td>
      <td>${esc(t.sources.join(", "))}</td><td>${esc(t.dest ?? "(stays)")}</td>
      <td>${esc(t.by.join(", "))}</td></tr>`).join("")}</table></div>`;
}

// ------------------------------------------------------------------ live updates

async function follow() {
  // fetch rather than EventSource: EventSource cannot send the token header.
  for (;;) {
    if (!state.token) return;
    const controller = new AbortController();
    state.stream = controller;
    const headers = {Authorization: `Bearer ${state.token}`};
    if (state.lastEventId !== null) headers["Last-Event-ID"] = state.lastEventId;
    try {
      const answer = await fetch("/api/v1/events", {headers, signal: controller.signal});
      if (answer.status === 401) return logout("The token was refused: log in again.");
      if (!answer.ok) throw new Error(`${answer.status}`);
      $("live").classList.add("on");
      const reader = answer.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, {stream: true});
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
          const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) changed(JSON.parse(data));
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
    }
    $("live").classList.remove("on");
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

let redraw = null;
function changed(event) {
  state.lastEventId = String(event.id);
  const page = state.page;
  if (page?.type === "fleet" && event.kind === page.kind) {
    const doc = state.machines.get(event.name) || {name: event.name, counters: {}};
    doc.state = event.to_state; doc.state_entered_at = event.at; doc.epoch = event.epoch;
    state.machines.set(event.name, doc);
    if (!redraw) redraw = requestAnimationFrame(() => { redraw = null; renderFleet(); });
  } else if (page?.type === "machine" && event.kind === page.kind && event.name === page.name) {
    clearTimeout(state.refresh);
    state.refresh = setTimeout(() => showMachine(page.kind, page.name), 200);
  } else if (page?.type === "leases" && (event.kind === "lease" ||
             (event.kind === "board" && event.event.startsWith("lease_")))) {
    refreshLeases(300);
  } else if (page?.type === "lease" && event.kind === "lease" &&
             (event.name === page.name || (page.queued && !$("revoke-reason")?.value))) {
    refreshLeases(300);  // its own change; or, while it waits, one that may move it
  }
}

if (state.token) start().catch((error) => { if (error.message !== "401") showLogin(error.message); });
else showLogin();
