// The approvals page: reads and votes through the control API with the token the operator gives.
// Everything shown is set as text (never as HTML), so nothing an agent sent can run here.
"use strict";

const STATES = ["pending", "committed", "failed", "denied", "in_doubt", "held", "approved", "aborted",
  "fenced", "replayed"];
const RECENT = 200; // the newest actions the page keeps in view, whatever the log's length
let token = sessionStorage.getItem("airlock-token") || "";
let voter = sessionStorage.getItem("airlock-voter") || "";

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function say(text) { $("status").textContent = text; }

async function api(path, body) {
  const init = { headers: { Authorization: `Bearer ${token}` } };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const data = await r.json().catch(() => ({}));
  if (r.status === 401) { signOut("the token was refused"); throw new Error("unauthorized"); }
  if (!r.ok) throw new Error(data.message || `${r.status}`);
  return data;
}

function what(a) {
  if (a.tool) return `${a.tool} ${a.args !== undefined ? JSON.stringify(a.args) : ""}`;
  return `${a.method} ${a.url}`;
}

function waited(a) {
  const since = a.ts || a.started || null;
  if (!since) return "";
  const s = Math.max(0, Math.round(Date.now() / 1000 - since));
  return s < 120 ? `${s} s` : `${Math.round(s / 60)} min`;
}

async function vote(id, choice, reason) {
  try {
    const out = await api(`/v1/actions/${id}/votes`, { vote: choice, voter, reason });
    say(out.decision ? `action ${id}: ${out.decision.data.decision}` : `action ${id}: vote recorded`);
  } catch (e) { say(`action ${id}: ${e.message}`); }
  refresh();
}

function heldRow(a) {
  const tr = el("tr");
  tr.dataset.id = a.id;
  const rule = el("td", a.rule || "");
  if (a.message) rule.append(el("div", a.message, "message"));
  tr.append(el("td", a.id), el("td", what(a), "what"), el("td", a.agent), rule,
    el("td", waited(a)), el("td", (a.approved_by || []).join(", ") || "none"));
  const td = el("td");
  const reason = el("input");
  reason.placeholder = "reason";
  reason.className = "reason";
  const yes = el("button", "Approve", "approve");
  const no = el("button", "Deny", "deny");
  yes.addEventListener("click", () => vote(a.id, "approve", reason.value));
  no.addEventListener("click", () => vote(a.id, "deny", reason.value));
  td.append(reason, yes, no);
  tr.append(td);
  return tr;
}

function recentRow(a) {
  const tr = el("tr");
  tr.dataset.id = a.id;
  tr.append(el("td", a.id), el("td", a.state, `state-${a.state}`), el("td", what(a), "what"),
    el("td", a.status ?? ""), el("td", a.agent), el("td", a.rule || ""), el("td", a.protocol));
  tr.addEventListener("click", () => show(a.id));
  return tr;
}

function matches(a) {
  const f = (id, v) => !$(id).value || String(v || "").includes($(id).value);
  return f("f-agent", a.agent) && f("f-rule", a.rule) && f("f-protocol", a.protocol);
}

async function show(id) {
  const found = await api(`/v1/actions/${id}`);
  $("entries-id").textContent = id;
  $("entries-body").textContent = JSON.stringify(found, null, 2);
  $("entries").hidden = false;
}

// Held rows keep their reason fields while the list refreshes: only rows that came or went change.
function syncHeld(pending) {
  const body = $("held").querySelector("tbody");
  const seen = new Set(pending.map((a) => String(a.id)));
  for (const tr of [...body.children]) if (!seen.has(tr.dataset.id)) tr.remove();
  const have = new Set([...body.children].map((tr) => tr.dataset.id));
  for (const a of pending) {
    if (have.has(String(a.id))) {
      const tr = body.querySelector(`tr[data-id="${a.id}"]`);
      tr.children[4].textContent = waited(a);
      tr.children[5].textContent = (a.approved_by || []).join(", ") || "none";
    } else body.append(heldRow(a));
  }
  $("held-count").textContent = pending.length;
  $("held-empty").hidden = pending.length > 0;
}

async function refresh() {
  try {
    const [pending, freeze] = await Promise.all([api("/v1/pending"), api("/v1/freeze")]);
    syncHeld(pending.pending);
    const badge = $("freeze-state");
    badge.textContent = freeze.frozen ? `frozen by ${freeze.by}: ${freeze.reason || "no reason"}` : "not frozen";
    badge.className = freeze.frozen ? "badge frozen" : "badge";
    const state = $("f-state").value;
    const recent = await api(`/v1/actions?newest=${RECENT}&limit=${RECENT}${state ? `&state=${state}` : ""}`);
    const body = $("recent").querySelector("tbody");
    body.replaceChildren(...recent.actions.filter(matches).reverse().map(recentRow));
  } catch (e) { if (e.message !== "unauthorized") say(e.message); }
}

function signOut(why) {
  token = "";
  sessionStorage.removeItem("airlock-token");
  $("app").hidden = true;
  $("login").hidden = false;
  say(why);
}

function signIn() {
  $("login").hidden = true;
  $("app").hidden = false;
  say(`signed in as ${voter}`);
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const s of STATES) $("f-state").append(new Option(s, s));
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    voter = $("voter").value.trim();
    sessionStorage.setItem("airlock-token", token);
    sessionStorage.setItem("airlock-voter", voter);
    signIn();
  });
  $("freeze-button").addEventListener("click", async () => {
    try { await api("/v1/freeze", { reason: $("freeze-reason").value, by: voter }); } catch (e) { say(e.message); }
    refresh();
  });
  $("thaw-button").addEventListener("click", async () => {
    try { await api("/v1/thaw", { reason: $("freeze-reason").value, by: voter }); } catch (e) { say(e.message); }
    refresh();
  });
  for (const id of ["f-state", "f-agent", "f-rule", "f-protocol"]) $(id).addEventListener("input", refresh);
  if (token && voter) signIn();
  setInterval(() => { if (token) refresh(); }, 1000);
});
