// console.js - the manager console's page: no framework, no external assets.
// Talks only to lockerd-console's /api (same origin, session cookie, CSRF token
// in X-CSRF-Token on every change). Times are shown in the station's time zone.
"use strict";

const $ = (id) => document.getElementById(id);
let cat = {};
let lang = "de";
let session = null; // {account, role, csrf}
let status = null;
let tz = "Europe/Berlin";
let weekStart = null; // "YYYY-MM-DD", a Monday
let bookings = [];
let directory = { clubs: [], members: [], cards: [] };
let holidays = { school: [], public: [] };
let acks = {};
let timer = null;

function t(key, vars) {
  let s = (cat[key] !== undefined ? cat[key] : key);
  return s.replace(/\{(\w+)\}/g, (m, k) => (vars && k in vars ? String(vars[k]) : m));
}

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}

function say(text, kind) {
  const m = $("msg");
  m.textContent = text;
  m.className = "msg " + (kind || "");
  m.setAttribute("role", kind === "error" ? "alert" : "status");
}

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  if (method !== "GET" && session) opts.headers["X-CSRF-Token"] = session.csrf;
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (r.status === 401 && path !== "/api/login") { showLogin(); }
  return { status: r.status, data };
}

async function cmd(name, args) {
  const r = await api("POST", "/api/cmd", { cmd: name, args });
  if (r.status !== 200) {
    const msg = r.data && r.data.error ? r.data.error.message : "HTTP " + r.status;
    say(t("refused", { msg }), "error");
    return null;
  }
  return r.data.result;
}

// ------------------------------------------------------------ time in the station's zone

function localParts(ms) {
  const f = new Intl.DateTimeFormat("en-CA", { timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  const p = {};
  for (const x of f.formatToParts(new Date(ms))) p[x.type] = x.value;
  return { date: p.year + "-" + p.month + "-" + p.day, time: p.hour + ":" + p.minute };
}
function fmt(ms) {
  if (!ms) return "";
  return new Intl.DateTimeFormat(lang, { timeZone: tz, weekday: "short", day: "numeric", month: "short",
    hour: "2-digit", minute: "2-digit" }).format(new Date(ms));
}
function addDays(date, n) {
  const d = new Date(date + "T00:00:00Z");
  d.setUTCDate(d.getUTCDate() + n);
  return d.toISOString().slice(0, 10);
}
function weekday(date) { return new Date(date + "T00:00:00Z").getUTCDay(); }
function mondayOf(date) { return addDays(date, -((weekday(date) + 6) % 7)); }
function dayName(date) {
  return new Intl.DateTimeFormat(lang, { timeZone: "UTC", weekday: "short", day: "numeric", month: "numeric" })
    .format(new Date(date + "T00:00:00Z"));
}
function parseTime(s) { return s ? Date.parse(s) : 0; }

// ------------------------------------------------------------ language

async function setLang(l) {
  lang = l;
  const r = await fetch("i18n/" + l + ".json");
  cat = await r.json();
  document.documentElement.lang = l;
  for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
  document.title = t("title") + " – " + t("console");
  $("lang").textContent = l === "de" ? "English" : "Deutsch";
  $("lang").setAttribute("lang", l === "de" ? "en" : "de");
  $("tabs").setAttribute("aria-label", t("tabs"));
  if (session) renderAll();
}

// ------------------------------------------------------------ login

function showLogin() {
  session = null;
  $("login").hidden = false;
  $("app").hidden = true;
  $("logout").hidden = true;
  $("who").hidden = true;
  if (timer) { clearInterval(timer); timer = null; }
}

async function loggedIn(s) {
  session = s;
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  $("who").hidden = false;
  $("who").textContent = s.account + " (" + t("role." + s.role) + ")";
  await refresh();
  if (!timer) timer = setInterval(() => { if (!$("tab-status").hidden) refreshStatus(); }, 5000);
}

async function login(ev) {
  ev.preventDefault();
  const r = await api("POST", "/api/login", { account: $("account").value, password: $("password").value });
  $("password").value = "";
  if (r.status === 200) {
    $("login-msg").textContent = "";
    await loggedIn(r.data);
  } else if (r.status === 429) {
    $("login-msg").textContent = t("login.throttled", { s: r.data.error.retryAfter });
  } else {
    $("login-msg").textContent = t("login.bad");
  }
}

// ------------------------------------------------------------ data

async function refreshStatus() {
  const r = await api("GET", "/api/status");
  if (r.status !== 200) return;
  status = r.data.result;
  tz = status.station.timezone || tz;
  const ev = await api("GET", "/api/events?type=alarm.acknowledged");
  acks = {};
  if (ev.status === 200) {
    for (const e of ev.data.result.events.slice().reverse()) acks[e.reason + "/" + (e.compartment || 0)] = e;
  }
  renderStatus();
}

async function refresh() {
  await refreshStatus();
  const [b, d] = await Promise.all([api("GET", "/api/bookings"), api("GET", "/api/directory")]);
  if (b.status === 200) bookings = b.data.result.bookings;
  if (d.status === 200) directory = d.data.result;
  if (!weekStart) weekStart = mondayOf(localParts(parseTime(status.station.time)).date);
  renderAll();
}

function renderAll() {
  $("station-name").textContent = status ? status.station.name : t("title");
  renderStatus();
  renderWeek();
  renderDirectory();
  fillSelects();
}

// ------------------------------------------------------------ status

function renderStatus() {
  if (!status) return;
  const tb = $("comps").tBodies[0];
  tb.replaceChildren();
  const now = parseTime(status.station.time);
  for (const c of status.compartments) {
    const due = c.due ? parseTime(c.due) : 0;
    const overdue = c.key === "out" && due && due < now;
    tb.append(el("tr", { "data-n": c.number },
      el("th", { scope: "row" }, c.number + " – " + c.keyLabel),
      el("td", {}, t("state." + c.state)),
      el("td", { class: c.key === "out" ? "out" : "", "data-key": c.key }, t("key." + c.key),
        overdue ? " – " + t("key.overdue") : ""),
      el("td", {}, c.holder ? c.holder.club : ""),
      el("td", {}, c.since ? fmt(parseTime(c.since)) : ""),
      el("td", {}, due ? fmt(due) : "")));
  }
  const ul = $("alarms");
  ul.replaceChildren();
  if (!status.alarms.length) ul.append(el("li", {}, t("alarms.none")));
  for (const a of status.alarms) {
    const key = a.type + "/" + (a.compartment || 0);
    const ack = acks[key];
    const li = el("li", { class: "alarm", "data-alarm": key },
      t("alarm." + a.type) + (a.compartment ? " – " + t("col.comp") + " " + a.compartment : ""));
    if (ack) li.append(el("span", { class: "acked" }, t("alarms.acked", { who: ack.operator, when: fmt(parseTime(ack.occurredAt)) })));
    li.append(el("button", { type: "button", class: "secondary", onclick: async () => {
      const args = { type: a.type };
      if (a.compartment) args.compartment = a.compartment;
      const r = await cmd("alarm.ack", args);
      if (r) { say(t("alarms.ackdone", { who: r.by }), "ok"); await refreshStatus(); }
    } }, t("alarms.ack")));
    ul.append(li);
  }
}

// ------------------------------------------------------------ week view

function clubName(id) {
  const c = directory.clubs.find((x) => x.id === id);
  return c ? c.name : id;
}

function renderWeek() {
  if (!status || !weekStart) return;
  const days = [0, 1, 2, 3, 4, 5, 6].map((i) => addDays(weekStart, i));
  $("week-label").textContent = t("bookings.week", { from: dayName(days[0]), to: dayName(days[6]) });
  const head = el("tr", {}, el("th", { scope: "col" }, t("col.comp")));
  for (const d of days) head.append(el("th", { scope: "col" }, dayName(d)));
  $("week").tHead.replaceChildren(head);
  const tb = $("week").tBodies[0];
  tb.replaceChildren();
  for (const c of status.compartments) {
    const row = el("tr", {}, el("th", { scope: "row" }, c.number + " – " + c.keyLabel));
    for (const d of days) {
      const cell = el("td", {});
      for (const b of bookings) {
        if (b.compartment !== c.number || b.status !== "active") continue;
        const s = localParts(b.start), e = localParts(b.end);
        if (s.date !== d) continue;
        const city = b.source !== "local";
        const div = el("div", { class: "booking" + (city ? " city" : ""), "data-id": b.id },
          s.time + "–" + e.time + " ", el("strong", {}, clubName(b.club)),
          el("div", { class: "src" }, city ? t("bookings.city", { src: b.source }) : t("bookings.local")));
        if (!city) {
          div.append(el("button", { type: "button", class: "secondary", "aria-label": t("bookings.cancel") + " " + s.time + " " + clubName(b.club),
            onclick: async () => {
              if (await cmd("booking.cancel", { id: b.id })) { say(t("bookings.cancelled"), "ok"); await refresh(); }
            } }, t("bookings.cancel")));
        }
        cell.append(div);
      }
      row.append(cell);
    }
    tb.append(row);
  }
  const sel = $("m-id");
  const keep = sel.value;
  sel.replaceChildren();
  const now = status ? parseTime(status.station.time) : 0;
  for (const b of bookings) {
    if (b.source !== "local" || b.status !== "active" || b.end < now) continue;
    const s = localParts(b.start), e = localParts(b.end);
    sel.append(el("option", { value: b.id }, s.date + " " + s.time + "–" + e.time + " " + t("col.comp") + " " + b.compartment + " " + clubName(b.club)));
  }
  if (keep) sel.value = keep;
}

function holidayDates(first, until) {
  const out = [];
  for (let d = first; d <= until; d = addDays(d, 7)) {
    const school = holidays.school.some((h) => h.from <= d && d <= h.to);
    const pub = holidays.public.some((h) => h.date === d);
    if (school || pub) out.push(d);
  }
  return out;
}

async function createBooking(ev) {
  ev.preventDefault();
  const date = $("b-date").value, from = $("b-from").value, to = $("b-to").value;
  if (to <= from) { say(t("bookings.order"), "error"); return; }
  const args = { club: $("b-club").value, compartment: Number($("b-comp").value),
    from: date + "T" + from, to: date + "T" + to };
  if ($("b-weekly").checked) {
    const until = $("b-until").value;
    if (!until || until < date) { say(t("bookings.needuntil"), "error"); return; }
    let except = $("b-except").value.split(",").map((s) => s.trim()).filter((s) => s);
    if ($("b-holidays").checked) except = except.concat(holidayDates(date, until));
    args.repeat = { until, except: Array.from(new Set(except)).sort() };
  }
  const r = await cmd("booking.add", args);
  if (!r) return;
  const n = r.ids ? r.ids.length : 1;
  say(t("bookings.created", { n, skipped: r.skipped && r.skipped.length ? r.skipped.join(", ") : "–" }), "ok");
  weekStart = mondayOf(date);
  await refresh();
}

async function moveBooking(ev) {
  ev.preventDefault();
  const d = $("m-date").value;
  if ($("m-to").value <= $("m-from").value) { say(t("bookings.order"), "error"); return; }
  const r = await cmd("booking.move", { id: $("m-id").value, from: d + "T" + $("m-from").value, to: d + "T" + $("m-to").value });
  if (r) { say(t("bookings.moved"), "ok"); weekStart = mondayOf(d); await refresh(); }
}

// ------------------------------------------------------------ events, report

function eventQuery() {
  const q = new URLSearchParams();
  if ($("e-type").value.trim()) q.set("type", $("e-type").value.trim());
  if ($("e-comp").value) q.set("compartment", $("e-comp").value);
  return q.toString();
}

async function loadEvents(ev) {
  if (ev) ev.preventDefault();
  const q = eventQuery();
  $("e-csv").href = "/api/events.csv" + (q ? "?" + q : "");
  const r = await api("GET", "/api/events" + (q ? "?" + q : ""));
  if (r.status !== 200) return;
  const tb = $("events").tBodies[0];
  tb.replaceChildren();
  for (const e of r.data.result.events.slice(0, 300)) {
    tb.append(el("tr", { "data-type": e.type }, el("td", {}, e.seq), el("td", {}, fmt(parseTime(e.occurredAt))),
      el("td", {}, e.type), el("td", {}, e.compartment || ""), el("td", {}, e.club || ""),
      el("td", {}, e.reason || ""), el("td", {}, e.operator || "")));
  }
}

async function loadReport(ev) {
  if (ev) ev.preventDefault();
  const q = new URLSearchParams();
  if ($("r-from").value) q.set("from", $("r-from").value);
  if ($("r-to").value) q.set("to", $("r-to").value);
  const r = await api("GET", "/api/report" + (q.toString() ? "?" + q : ""));
  if (r.status !== 200) { say(t("refused", { msg: r.data && r.data.error ? r.data.error.message : r.status }), "error"); return; }
  const rep = r.data.result;
  const rows = rep.byClub || rep.clubs || [];
  const cols = ["club", "booked", "collected", "noShows", "pending", "cancelled", "overdue"];
  $("report").tHead.replaceChildren(el("tr", {}, ...cols.map((c) => el("th", { scope: "col" }, t("report." + c)))));
  const tb = $("report").tBodies[0];
  tb.replaceChildren();
  for (const row of rows) tb.append(el("tr", {}, ...cols.map((c) => el("td", {}, row[c] !== undefined ? row[c] : ""))));
  if (rep.total) tb.append(el("tr", {}, ...cols.map((c, i) => el(i ? "td" : "th", i ? {} : { scope: "row" }, i ? (rep.total[c] !== undefined ? rep.total[c] : "") : t("report.total")))));
}

// ------------------------------------------------------------ clubs, members, cards

function renderDirectory() {
  const ul = $("clubs");
  ul.replaceChildren();
  for (const c of directory.clubs) ul.append(el("li", {}, el("strong", {}, c.name), " (" + c.id + ")"));
  const tb = $("members").tBodies[0];
  tb.replaceChildren();
  for (const m of directory.members) {
    const cards = el("td", {});
    for (const c of directory.cards.filter((x) => x.member === m.id)) {
      const d = el("div", { "data-card": c.id }, c.id + " – " + t("card." + c.type) + " – " + t("card.status." + c.status));
      if (c.type === "uid") d.append(el("span", { class: "insecure" }, " – " + t("card.insecure")));
      if (c.status === "active" && c.source === "local") {
        d.append(" ", el("button", { type: "button", class: "secondary", "aria-label": t("card.revoke") + " " + c.id, onclick: async () => {
          if (await cmd("card.revoke", { id: c.id })) { say(t("card.revoked"), "ok"); await refresh(); }
        } }, t("card.revoke")));
      }
      cards.append(d);
    }
    tb.append(el("tr", {}, el("td", {}, m.name), el("td", {}, (m.clubs || "").split(" ").map(clubName).join(", ")), cards));
  }
}

function fillSelects() {
  const fill = (sel, items, first) => {
    const keep = sel.value;
    sel.replaceChildren(...(first ? [first] : []), ...items.map(([v, l]) => el("option", { value: v }, l)));
    if (keep) sel.value = keep;
  };
  const comps = status ? status.compartments.map((c) => [String(c.number), c.number + " – " + c.keyLabel]) : [];
  fill($("b-comp"), comps);
  fill($("svc-comp"), comps);
  fill($("e-comp"), comps, el("option", { value: "" }, t("events.all")));
  const clubs = directory.clubs.map((c) => [c.id, c.name]);
  fill($("b-club"), clubs);
  fill($("mm-club"), clubs);
  fill($("en-member"), directory.members.map((m) => [m.id, m.name]));
}

async function saveClub(ev) {
  ev.preventDefault();
  const id = $("c-id").value.trim(), name = $("c-name").value.trim();
  const exists = directory.clubs.some((c) => c.id === id);
  if (await cmd(exists ? "club.rename" : "club.add", { id, name })) { say(t("dir.saved"), "ok"); await refresh(); }
}

async function addMember(ev) {
  ev.preventDefault();
  if (await cmd("member.add", { name: $("mm-name").value.trim(), clubs: [$("mm-club").value] })) { say(t("dir.saved"), "ok"); await refresh(); }
}

async function enrol(ev) {
  ev.preventDefault();
  say(t("dir.waiting"), "");
  const r = await cmd("card.enroll", { member: $("en-member").value, timeoutMs: 60000 });
  if (r) { say(t("dir.enrolled", { id: r.id }) + (r.card === "uid" ? " " + t("card.insecure") : ""), "ok"); await refresh(); }
}

async function service(ev) {
  ev.preventDefault();
  const action = $("svc-action").value;
  const r = await cmd(action, { compartment: Number($("svc-comp").value), reason: $("svc-reason").value.trim() });
  if (r) { say(t("service.done"), "ok"); $("svc-reason").value = ""; await refreshStatus(); }
}

// ------------------------------------------------------------ tabs, start

function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) {
    if (b.dataset.tab === name) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
  for (const s of document.querySelectorAll("section[id^=tab-]")) s.hidden = s.id !== "tab-" + name;
  if (name === "events") loadEvents();
  if (name === "report") loadReport();
  if (name === "status") refreshStatus();
  if (name === "bookings" || name === "directory") refresh();
}

async function start() {
  await setLang(localStorage.getItem("lang") === "en" ? "en" : "de");
  try { holidays = await (await fetch("holidays-mv.json")).json(); } catch (e) { /* none */ }
  $("login-form").addEventListener("submit", login);
  $("lang").addEventListener("click", () => { const l = lang === "de" ? "en" : "de"; localStorage.setItem("lang", l); setLang(l); });
  $("logout").addEventListener("click", async () => { await api("POST", "/api/logout", {}); showLogin(); });
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  $("week-prev").addEventListener("click", () => { weekStart = addDays(weekStart, -7); renderWeek(); });
  $("week-next").addEventListener("click", () => { weekStart = addDays(weekStart, 7); renderWeek(); });
  $("booking-form").addEventListener("submit", createBooking);
  $("move-form").addEventListener("submit", moveBooking);
  $("events-form").addEventListener("submit", loadEvents);
  $("report-form").addEventListener("submit", loadReport);
  $("club-form").addEventListener("submit", saveClub);
  $("member-form").addEventListener("submit", addMember);
  $("enrol-form").addEventListener("submit", enrol);
  $("service-form").addEventListener("submit", service);
  const r = await api("GET", "/api/session");
  if (r.status === 200) await loggedIn(r.data);
  else showLogin();
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", start);
