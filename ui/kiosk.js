// kiosk.js - the station's touch screen. No framework: one state object, one
// render() that derives the whole screen from it.
//
// Input: Server-Sent Events from lockerd (/api/events): "status" (the public
// station status, see daemon/ui.c) and "station" (one public event: a tap's
// outcome, a pickup, a return, an alarm). Texts come from i18n/<lang>.json.
//
// Card + PIN: after access.pinRequested the "pin" view shows a touch PIN pad; the
// PIN goes to POST api/pin with the nonce of the tap from the status (status.pin),
// and only access.granted (after the right PIN) leads on to "granted". Condition
// notes: after a return the "done" view offers one-touch notes while the status
// has a note window (status.note), posted to api/note with its nonce. The free
// text is typed on an on-screen keyboard (the station has none): it opens when
// the field is touched.
"use strict";

(function () {
  var OUTCOME_MS = 12000; // how long a refusal or a finished action stays up
  var OFFLINE_AFTER_MS = 2500; // a stream that stays broken this long is "out of service"
  var LANG_RESET_MS = 60000; // back to the station's language after this without a touch
  var LANGS = ["de", "en"];
  var TIMED = { unlocking: "open", open_pickup: "close", open_return: "close", open_service: "close" };

  var $ = function (id) { return document.getElementById(id); };
  var S = {
    cats: {},
    lang: "de",
    defaultLang: "de",
    status: null,
    statusAt: 0,
    connected: false,
    outcome: null, // {kind, tone, icon, key..., n, until}
    active: null, // {n, purpose}: the compartment opened by the last grant
    version: null,
    es: null,
    offTimer: 0,
    langTimer: 0,
    tick: 0,
    layoutKey: "",
    pinDigits: "",
    pinMsg: "",
    notesSent: {},
    notesMsg: "",
    kbdOpen: false,
    kbdShift: false,
  };
  // For tests and the latency benchmark: what was painted when.
  window.kioskPaints = [];

  function t(key, vars) {
    var cat = S.cats[S.lang] || {};
    var s = cat[key];
    if (s === undefined) s = (S.cats.de || {})[key];
    if (s === undefined) return key;
    return s.replace(/\{(\w+)\}/g, function (m, k) {
      return vars && vars[k] !== undefined ? String(vars[k]) : m;
    });
  }

  // ---------------------------------------------------------------- time

  function tz() { return (S.status && S.status.station.timezone) || "Europe/Berlin"; }
  function locale() { return S.lang === "de" ? "de-DE" : "en-GB"; }

  // The station's clock: its last status time plus what passed here since.
  function stationNow() {
    if (!S.status) return new Date();
    var base = Date.parse(S.status.station.time);
    return new Date(base + (performance.now() - S.statusAt));
  }

  function fmtTime(d) {
    return new Intl.DateTimeFormat(locale(), { timeZone: tz(), hour: "2-digit", minute: "2-digit", hour12: false }).format(d);
  }
  function dayKey(d) {
    return new Intl.DateTimeFormat("en-CA", { timeZone: tz(), year: "numeric", month: "2-digit", day: "2-digit" }).format(d);
  }
  function fmtWhen(d) {
    var now = stationNow();
    var time = fmtTime(d);
    if (dayKey(d) === dayKey(now)) return t("when.today", { time: time });
    if (dayKey(d) === dayKey(new Date(now.getTime() + 86400000))) return t("when.tomorrow", { time: time });
    var day = new Intl.DateTimeFormat(locale(), { timeZone: tz(), weekday: "long", day: "numeric", month: "long" }).format(d);
    return t("when.other", { day: day, time: time });
  }

  // ---------------------------------------------------------------- outcomes

  function refusalText(ev) {
    var r = ev.reason || "other";
    var detail = ev.detail || {};
    var next = detail.nextBookingStart ? new Date(detail.nextBookingStart) : null;
    var key = "refused." + r;
    var vars = {};
    if (r === "outside-pickup-window" && next) {
      if (next.getTime() > stationNow().getTime()) {
        key += ".early";
        vars.time = fmtTime(new Date(next.getTime() - ((S.status && S.status.ui.pickupWindowMs) || 0)));
      } else {
        key += ".late";
      }
    }
    if (r === "pin-locked-out") {
      if (detail.lockedUntil) {
        key = "refused.pin-locked-out.until";
        vars.time = fmtTime(new Date(detail.lockedUntil));
      } else {
        vars.min = Math.ceil((detail.lockoutMs || 60000) / 60000);
      }
    }
    if (!(key in (S.cats[S.lang] || {}))) key = "refused.other";
    return {
      body: t(key, vars),
      extra: r === "no-booking" && next ? t("refused.next", { when: fmtWhen(next) }) : "",
    };
  }

  // One event -> what the screen says about it (null: nothing to say).
  function outcomeOf(ev) {
    var n = ev.compartment;
    var until = performance.now() + OUTCOME_MS;
    switch (ev.type) {
      case "access.granted":
        S.active = { n: n, purpose: (ev.detail && ev.detail.purpose) || "pickup" };
        return { kind: "granted", n: n, purpose: S.active.purpose, until: Infinity, at: performance.now() };
      case "access.denied":
        if (ev.reason === "pin-wrong" && S.outcome && S.outcome.kind === "pin") {
          var left = (ev.detail && ev.detail.attemptsLeft) || 0;
          S.pinMsg = left === 1 ? t("pin.wrong.one") : t("pin.wrong", { left: left });
          S.pinDigits = "";
          return S.outcome;
        }
        return { kind: "refused", ev: ev, until: until };
      case "access.pinRequested":
        S.pinDigits = "";
        S.pinMsg = "";
        return { kind: "pin", n: n, until: Infinity, at: performance.now() };
      case "access.pinCancelled":
        return { kind: "pincancel", reason: ev.reason, n: n, until: until };
      case "key.checkedOut":
        return { kind: "done", purpose: "pickup", n: n, until: until };
      case "key.returned":
        return { kind: "done", purpose: "return", n: n, until: until };
      case "pickup.aborted":
        return { kind: "aborted", purpose: "pickup", n: n, until: until };
      case "return.incomplete":
        return { kind: "aborted", purpose: "return", n: n, until: until };
      case "door.forced":
      case "door.heldOpen":
      case "key.overdue":
      case "sensor.fault":
      case "station.tamper":
        return { kind: "alarm", type: ev.type, n: n, until: until };
      case "service.open":
        S.active = { n: n, purpose: "service" };
        return { kind: "service", n: n, until: until };
      case "door.closed":
        return { kind: "closed", n: n, until: until };
      default:
        return null;
    }
  }

  function compOf(n) {
    var cs = (S.status && S.status.compartments) || [];
    for (var i = 0; i < cs.length; i++) if (cs[i].number === n) return cs[i];
    return null;
  }

  // ---------------------------------------------------------------- the view

  // Everything on screen, derived from S.
  function view() {
    if (!S.connected || !S.status) {
      return { name: "offline", tone: "off", icon: "i-off", title: t("offline.title"), body: t("offline.body") };
    }
    var o = S.outcome;
    var now = performance.now();
    if (o && o.kind === "granted") {
      var c = compOf(o.n);
      var phase = c && TIMED[c.state];
      // Locked: the status showing it unlocking is on its way (an unlock that
      // failed would leave it locked: give up after a while).
      var waiting = (!c || c.state === "locked_full" || c.state === "locked_empty") && now - o.at < 8000;
      if (phase || waiting) {
        // Still opening (or the status that shows it is on its way).
        var v = {
          name: "granted", tone: "ok", icon: o.purpose === "return" ? "i-return" : "i-ok",
          title: t("granted." + o.purpose + ".title", { n: o.n }),
          body: t("granted." + o.purpose + ".body", { n: o.n }), lit: o.n, reason: o.purpose,
        };
        if (phase === "close") {
          if (o.purpose === "return") v.body = t(c.key === "in" ? "open.return.put" : "open.return.body");
          else v.body = t(c.key === "out" ? "open.pickup.taken" : "open.pickup.body");
        }
        if (phase && typeof c.remainingMs === "number") {
          v.countdown = { phase: phase, left: c.remainingMs - (now - S.statusAt), limit: c.limitMs };
        }
        return v;
      }
      S.outcome = o = null; // the compartment moved on without an event for it
    }
    if (o && o.kind === "pin") {
      var pin = S.status.pin;
      if ((pin && pin.compartment === o.n) || now - o.at < 3000) {
        var pv = { name: "pin", tone: "info", icon: "i-key", title: t("pin.title"), body: t("pin.body", { n: o.n }), lit: o.n, reason: "pin" };
        if (pin) pv.countdown = { phase: "pin", key: "pin.countdown", left: pin.remainingMs - (now - S.statusAt), limit: pin.limitMs };
        return pv;
      }
      S.outcome = o = null;
    }
    if (o && o.kind === "done" && o.purpose === "return" && S.status.note && S.status.note.compartment === o.n) {
      o.until = Math.max(o.until, now + 1000);
    }
    if (o && o.until > now) {
      switch (o.kind) {
        case "pincancel":
          var timeout = o.reason === "timeout";
          return { name: "pincancel", tone: "no", icon: "i-no", title: t(timeout ? "pin.timeout.title" : "pin.cancelled.title"),
            body: t(timeout ? "pin.timeout.body" : "pin.cancelled.body"), reason: o.reason };
        case "refused":
          var r = refusalText(o.ev);
          return { name: "refused", tone: "no", icon: "i-no", title: t("refused.title"), body: r.body, extra: r.extra, reason: o.ev.reason, lit: o.ev.compartment || 0 };
        case "done":
          return { name: "done", tone: o.purpose === "return" ? "info" : "ok", icon: o.purpose === "return" ? "i-return" : "i-key",
            title: t("done." + o.purpose + ".title", { n: o.n }), body: t("done." + o.purpose + ".body", { n: o.n }), reason: o.purpose,
            notes: o.purpose === "return" && !!S.status.note && S.status.note.compartment === o.n };
        case "aborted":
          return { name: "aborted", tone: "no", icon: "i-no", title: t("aborted." + o.purpose + ".title", { n: o.n }),
            body: t("aborted." + o.purpose + ".body", { n: o.n }), reason: o.purpose, lit: o.n };
        case "alarm":
          return { name: "alarm", tone: "alarm", icon: "i-alarm", title: t("alarm.title"), body: t("alarm." + o.type, { n: o.n }), reason: o.type, lit: o.n || 0 };
        case "service":
          return { name: "service", tone: "info", icon: "i-tool", title: t("service.title"), body: t("service.open", { n: o.n }), lit: o.n };
        case "closed":
          return { name: "closed", tone: "info", icon: "i-ok", title: t("service.title"), body: t("door.closed", { n: o.n }) };
      }
    }
    S.outcome = null;
    return { name: "idle", tone: "idle", icon: "i-card", title: t("idle.title"), body: t("idle.body") };
  }

  function setText(el, text) { if (el.textContent !== text) el.textContent = text; }

  var lastAnnounced = "";
  function announce(v, force) {
    var text = [v.title, v.body, v.extra].filter(Boolean).join(" ");
    if (!force && text === lastAnnounced) return;
    lastAnnounced = text;
    var region = v.tone === "alarm" ? $("say-alarm") : $("say");
    region.textContent = text;
    if (S.status && S.status.ui.speech && v.name !== "offline") {
      fetch("api/speak?lang=" + S.lang, { method: "POST", headers: { "Content-Type": "text/plain" }, body: text })
        .catch(function () { /* lockerd logs why */ });
    }
  }

  function render(announceIt) {
    var v = view();
    var b = document.body;
    b.dataset.view = v.name;
    b.dataset.tone = v.tone;
    b.dataset.reason = v.reason || "";
    $("icon").firstElementChild.setAttribute("href", "#" + v.icon);
    setText($("title"), v.title);
    setText($("body"), v.body || "");
    setText($("extra"), v.extra || "");
    renderCountdown(v);
    renderPin(v);
    renderNotes(v);
    document.querySelector(".main").classList.toggle("single", v.name === "pin" || !!v.notes);
    renderAlarms();
    renderHeader();
    drawStation(v);
    if (announceIt) announce(v, true);
    else if (v.name === "offline" || v.name === "idle") announce(v, false);
    return v;
  }

  function renderCountdown(v) {
    var cd = $("countdown");
    if (!v.countdown) { cd.hidden = true; return; }
    var left = Math.max(0, v.countdown.left);
    var s = Math.ceil(left / 1000);
    cd.hidden = false;
    var ckey = v.countdown.key || "countdown." + v.countdown.phase;
    setText($("countdown-text"), left > 0 || v.countdown.key ? t(ckey, { s: s }) : t("countdown.late"));
    var frac = v.countdown.limit > 0 ? Math.min(1, left / v.countdown.limit) : 0;
    $("countdown-bar").style.transform = "scaleX(" + frac.toFixed(3) + ")";
  }

  // ---------------------------------------------------------------- PIN pad

  function renderPin(v) {
    var pad = $("pinpad");
    pad.hidden = v.name !== "pin";
    if (pad.hidden) return;
    setText($("pin-label"), t("pin.label"));
    setText($("pin-entry"), S.pinDigits.replace(/./g, "●"));
    $("pin-entry").setAttribute("aria-label", t("pin.entered", { count: S.pinDigits.length }));
    setText($("pin-msg"), S.pinMsg);
    document.querySelector(".keys").setAttribute("aria-label", t("pin.keys"));
    $("pin-del").setAttribute("aria-label", t("pin.delete"));
    setText($("pin-ok"), t("pin.ok"));
    setText($("pin-cancel"), t("pin.cancel"));
  }

  function post(path, body) {
    return fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })
      .then(function (r) { return r.json().catch(function () { return {}; }); });
  }

  function onPinKey(e) {
    var b = e.target.closest("button");
    if (!b || !S.outcome || S.outcome.kind !== "pin") return;
    var pin = S.status && S.status.pin;
    if (b.dataset.digit !== undefined) {
      if (S.pinDigits.length < 8) S.pinDigits += b.dataset.digit;
      S.pinMsg = "";
    } else if (b.id === "pin-del") {
      S.pinDigits = S.pinDigits.slice(0, -1);
    } else if (b.id === "pin-ok" && pin && S.pinDigits.length >= 4) {
      var digits = S.pinDigits;
      S.pinDigits = "";
      post("api/pin", { nonce: pin.nonce, pin: digits }).then(function (res) {
        if (res.result === "wrong") {
          S.pinMsg = res.attemptsLeft === 1 ? t("pin.wrong.one") : t("pin.wrong", { left: res.attemptsLeft });
          render(false);
          announce({ title: S.pinMsg }, true);
        }
      });
    } else if (b.id === "pin-cancel" && pin) {
      S.pinDigits = "";
      post("api/pin", { nonce: pin.nonce, cancel: true });
    }
    render(false);
  }

  // ---------------------------------------------------------------- condition notes

  function renderNotes(v) {
    var box = $("notes");
    box.hidden = !v.notes;
    if (box.hidden) {
      S.notesSent = {}; S.notesMsg = "";
      S.kbdOpen = S.kbdShift = false;
      if ($("note-text").value) $("note-text").value = ""; // nothing left for the next person
      renderKeyboard(false);
      return;
    }
    setText($("notes-title"), t("notes.title"));
    Array.prototype.forEach.call(box.querySelectorAll("[data-note]"), function (b) {
      setText(b, t("notes." + b.dataset.note));
      b.setAttribute("aria-pressed", S.notesSent[b.dataset.note] ? "true" : "false");
      b.disabled = !!S.notesSent[b.dataset.note];
    });
    setText($("note-text-label"), t("notes.other"));
    if ($("note-text").placeholder !== t("notes.placeholder")) $("note-text").placeholder = t("notes.placeholder");
    setText($("note-send"), t("notes.send"));
    $("note-send").disabled = !!S.notesSent.other;
    setText($("notes-msg"), S.notesMsg);
    renderKeyboard(S.kbdOpen);
  }

  function sendNote(code, text) {
    var note = S.status && S.status.note;
    if (!note || S.notesSent[code]) return;
    S.notesSent[code] = true;
    var body = { nonce: note.nonce, code: code };
    if (text) body.text = text;
    post("api/note", body).then(function (res) {
      if (res.result === "recorded") S.notesMsg = t("notes.thanks");
      else S.notesSent[code] = false;
      render(false);
    });
    render(false);
  }

  function onNoteKey(e) {
    var b = e.target.closest("button");
    if (!b) return;
    if (b.dataset.note) sendNote(b.dataset.note);
    else if (b.id === "note-send") {
      var text = $("note-text").value.replace(/[\u0000-\u001f\u007f]/g, "").trim().slice(0, 200);
      if (text) { closeKeyboard(); sendNote("other", text); $("note-text").value = ""; }
    }
  }

  // ---------------------------------------------------------------- on-screen keyboard

  // German QWERTZ, built once into #kbd; rows of a 24-column grid (kiosk.css). The
  // shift key makes the next letter a capital. The keys do not take the focus from
  // the field (their mousedown is cancelled), so the text goes where its caret is.
  var KBD_ROWS = ["1234567890ß", "qwertzuiopü", "asdfghjklöä", "yxcvbnm,.-", "!?"];

  // A character key (ch) or a function key (id, also its class for kiosk.css).
  function kbdKey(row, ch, id, label) {
    var b = document.createElement("button");
    b.type = "button";
    if (ch) b.dataset.key = ch;
    if (id) b.id = b.className = id;
    b.textContent = label || ch || "";
    row.appendChild(b);
  }

  function buildKeyboard() {
    KBD_ROWS.forEach(function (keys, i) {
      var row = document.createElement("div");
      row.className = "kbd-row";
      if (i === 3) kbdKey(row, "", "kbd-shift", "⇧");
      keys.split("").forEach(function (ch) { kbdKey(row, ch); });
      if (i === 0) kbdKey(row, "", "kbd-back", "⌫");
      if (i === 4) { kbdKey(row, "", "kbd-space"); kbdKey(row, "", "kbd-close"); }
      $("kbd").appendChild(row);
    });
  }

  function upper(ch) { var u = ch.toUpperCase(); return u.length === 1 ? u : ch; } // ß stays ß

  function renderKeyboard(open) {
    var kbd = $("kbd");
    kbd.hidden = !open;
    $("message").classList.toggle("typing", open);
    if (!open) return;
    kbd.setAttribute("aria-label", t("kbd.label"));
    Array.prototype.forEach.call(kbd.querySelectorAll("[data-key]"), function (b) {
      setText(b, S.kbdShift ? upper(b.dataset.key) : b.dataset.key);
    });
    $("kbd-shift").setAttribute("aria-pressed", S.kbdShift ? "true" : "false");
    $("kbd-shift").setAttribute("aria-label", t("kbd.shift"));
    $("kbd-back").setAttribute("aria-label", t("kbd.backspace"));
    setText($("kbd-space"), t("kbd.space"));
    setText($("kbd-close"), t("kbd.close"));
  }

  function openKeyboard() {
    if (S.kbdOpen || $("notes").hidden) return;
    S.kbdOpen = true;
    render(false);
  }

  function closeKeyboard() {
    S.kbdOpen = S.kbdShift = false;
    $("note-text").blur();
    render(false);
  }

  // Replaces the field's selection with s (backspace: s is "" and an empty
  // selection takes the character before the caret); maxlength holds.
  function typeInto(s, back) {
    var f = $("note-text");
    var a = f.selectionStart, z = f.selectionEnd;
    if (back && a === z) a = Math.max(0, a - 1);
    if (f.value.length - (z - a) + s.length > f.maxLength) return;
    f.setRangeText(s, a, z, "end");
    if (f.selectionEnd === f.value.length) f.scrollLeft = f.scrollWidth; // the end of a long text in sight
  }

  function onKbdKey(e) {
    var b = e.target.closest("button");
    if (!b || !S.kbdOpen) return;
    // A tap (not Enter on a focused key) puts the focus back into the field, e.g.
    // after the language button: its caret and the end of a long text stay in sight.
    if (e.detail > 0 && b.id !== "kbd-close") $("note-text").focus();
    if (b.dataset.key) {
      typeInto(S.kbdShift ? upper(b.dataset.key) : b.dataset.key);
      S.kbdShift = false;
    } else if (b.id === "kbd-space") typeInto(" ");
    else if (b.id === "kbd-back") typeInto("", true);
    else if (b.id === "kbd-shift") S.kbdShift = !S.kbdShift;
    else if (b.id === "kbd-close") { closeKeyboard(); return; }
    render(false);
  }

  function renderAlarms() {
    var box = $("alarms");
    var list = (S.connected && S.status && S.status.alarms) || [];
    if (!list.length) { box.hidden = true; return; }
    var parts = list.map(function (a) { return t("alarm." + a.type, { n: a.compartment || "" }); });
    box.hidden = false;
    setText($("alarms-text"), parts.join(" "));
  }

  function renderHeader() {
    var other = S.lang === "de" ? "en" : "de";
    var btn = $("lang");
    document.documentElement.lang = S.lang;
    setText(btn, t("lang.switch"));
    btn.setAttribute("lang", other);
    btn.setAttribute("aria-label", t("lang.switchLabel"));
    var name = (S.status && S.status.station.name) || t("station.title");
    setText($("station-name"), name);
    document.title = name;
    setText($("clock"), S.status ? fmtTime(stationNow()) : "");
  }

  // ---------------------------------------------------------------- the drawing

  var SVGNS = "http://www.w3.org/2000/svg";
  function el(name, attrs, parent) {
    var e = document.createElementNS(SVGNS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }

  // Rebuilt only when the number of compartments changes; states are classes.
  function buildStation(comps) {
    var svg = $("station");
    while (svg.lastChild && svg.lastChild.nodeName !== "title") svg.removeChild(svg.lastChild);
    var defs = el("defs", {}, svg);
    var hatch = el("pattern", { id: "hatch", width: 12, height: 12, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" }, defs);
    el("rect", { width: 12, height: 12, fill: "#fff4d6" }, hatch);
    el("line", { x1: 0, y1: 0, x2: 0, y2: 12, stroke: "#7a4f00", "stroke-width": 5 }, hatch);
    var cross = el("pattern", { id: "cross", width: 14, height: 14, patternUnits: "userSpaceOnUse" }, defs);
    el("rect", { width: 14, height: 14, fill: "#eceff1" }, cross);
    el("path", { d: "M0 0L14 14M14 0L0 14", stroke: "#455a64", "stroke-width": 1.5 }, cross);

    var n = comps.length;
    var cols = n <= 4 ? 2 : n <= 9 ? 3 : 4;
    var rows = Math.ceil(n / cols);
    var x0 = 30, y0 = 14, w = 256, h = 250;
    el("rect", { class: "cabinet", x: x0 - 12, y: y0 - 8, width: w + 24, height: h + 16 + 84, rx: 10 }, svg);
    var cw = w / cols, ch = h / rows;
    comps.forEach(function (c, i) {
      var col = i % cols, row = Math.floor(i / cols);
      var g = el("g", { id: "comp-" + c.number, "data-n": c.number }, svg);
      var x = x0 + col * cw, y = y0 + row * ch;
      el("rect", { class: "comp", x: x + 4, y: y + 4, width: cw - 8, height: ch - 8, rx: 6 }, g);
      var num = el("text", { class: "num", x: x + cw / 2, y: y + ch / 2 - 8 }, g);
      num.textContent = String(c.number);
      var lab = el("text", { class: "label", x: x + cw / 2, y: y + ch / 2 + 22 }, g);
      lab.textContent = c.keyLabel || "";
      var st = el("text", { class: "state", x: x + cw - 18, y: y + 28 }, g);
      st.textContent = "";
      // An arrow beside the lit compartment: the cue that is not colour.
      el("path", { class: "arrow", d: "M" + (x - 26) + " " + (y + ch / 2 - 12) + "l18 12l-18 12z", visibility: "hidden" }, g);
    });
    var rg = el("g", { class: "reader" }, svg);
    var ry = y0 + h + 16;
    el("rect", { x: x0 + w / 2 - 70, y: ry, width: 140, height: 56, rx: 8 }, rg);
    var use = el("use", { href: "#i-card", x: x0 + w / 2 - 62, y: ry + 10, width: 36, height: 36 }, rg);
    use.setAttribute("aria-hidden", "true");
    var rt = el("text", { x: x0 + w / 2 + 18, y: ry + 33, id: "reader-label" }, rg);
    rt.textContent = "";
  }

  function drawStation(v) {
    var comps = (S.status && S.status.compartments) || [];
    var key = comps.map(function (c) { return c.number + ":" + (c.keyLabel || ""); }).join(",");
    if (key !== S.layoutKey) { buildStation(comps); S.layoutKey = key; }
    var alarmed = {};
    ((S.connected && S.status && S.status.alarms) || []).forEach(function (a) { if (a.compartment) alarmed[a.compartment] = true; });
    var desc = [t("drawing.label", { count: comps.length })];
    comps.forEach(function (c) {
      var g = $("comp-" + c.number);
      if (!g) return;
      var lit = S.connected && v.lit === c.number;
      var oos = c.state === "out_of_service" || c.state === "sensor_fault";
      var alarm = !!alarmed[c.number];
      g.setAttribute("class", (lit ? "lit " : "") + (alarm ? "alarm " : "") + (oos ? "oos" : ""));
      g.querySelector(".arrow").setAttribute("visibility", lit ? "visible" : "hidden");
      setText(g.querySelector(".state"), alarm ? "!" : oos ? "×" : c.door === "open" ? "⇱" : "");
      if (lit) desc.push(t("drawing.compartment.active", { n: c.number }));
      else if (alarm) desc.push(t("drawing.compartment.alarm", { n: c.number }));
      else if (oos) desc.push(t("drawing.compartment.oos", { n: c.number }));
      else if (c.door === "open") desc.push(t("drawing.compartment.open", { n: c.number }));
    });
    var rl = $("reader-label");
    if (rl) setText(rl, t("drawing.reader"));
    setText($("station-label"), desc.join(". "));
  }

  // ---------------------------------------------------------------- the stream

  function markPaint(what) {
    requestAnimationFrame(function () {
      window.kioskPaints.push({ what: what, at: performance.timeOrigin + performance.now() });
      if (window.kioskPaints.length > 200) window.kioskPaints.shift();
    });
  }

  function onStatus(e) {
    var st;
    try { st = JSON.parse(e.data); } catch (err) { return; }
    if (S.version && st.station.version !== S.version) { location.reload(); return; }
    S.version = st.station.version;
    if (!S.status) {
      S.defaultLang = LANGS.indexOf(st.ui.language) >= 0 ? st.ui.language : "de";
      S.lang = S.defaultLang;
    }
    S.status = st;
    S.statusAt = performance.now();
    var wasOffline = !S.connected;
    S.connected = true;
    clearTimeout(S.offTimer);
    S.offTimer = 0;
    render(false);
    if (wasOffline) markPaint("status");
  }

  function onStation(e) {
    var ev;
    try { ev = JSON.parse(e.data); } catch (err) { return; }
    var o = outcomeOf(ev);
    if (!o) return;
    S.outcome = o;
    render(true);
    markPaint(ev.type + (ev.reason ? ":" + ev.reason : "") + "#" + ev.seq);
    if (o.until !== Infinity) setTimeout(function () { render(false); }, OUTCOME_MS + 50);
  }

  function goOffline() {
    S.offTimer = 0;
    S.connected = false;
    S.outcome = null;
    S.active = null;
    render(false);
  }

  function connect() {
    var es = new EventSource("api/events");
    S.es = es;
    es.addEventListener("status", onStatus);
    es.addEventListener("station", onStation);
    es.onerror = function () {
      // The browser retries on its own while the stream is CONNECTING; a refusal
      // (an HTTP error) closes it for good, so start a new one.
      if (es.readyState === EventSource.CLOSED) {
        es.close();
        setTimeout(connect, 2000);
      }
      if (!S.offTimer && S.connected) S.offTimer = setTimeout(goOffline, OFFLINE_AFTER_MS);
    };
  }

  // ---------------------------------------------------------------- language

  function setLang(lang) {
    S.lang = lang;
    render(false);
  }

  function onLangTouch() {
    setLang(S.lang === "de" ? "en" : "de");
    clearTimeout(S.langTimer);
    S.langTimer = setTimeout(function resetLang() {
      if (document.body.dataset.view !== "idle") { S.langTimer = setTimeout(resetLang, 10000); return; }
      setLang(S.defaultLang);
    }, LANG_RESET_MS);
  }

  // ---------------------------------------------------------------- start

  function loadCatalogues() {
    return Promise.all(LANGS.map(function (l) {
      return fetch("i18n/" + l + ".json", { cache: "no-cache" }).then(function (r) {
        if (!r.ok) throw new Error("catalogue " + l + ": " + r.status);
        return r.json();
      }).then(function (cat) { S.cats[l] = cat; });
    }));
  }

  function start() {
    $("lang").addEventListener("click", onLangTouch);
    $("pinpad").addEventListener("click", onPinKey);
    $("pinpad").addEventListener("submit", function (e) { e.preventDefault(); });
    $("notes").addEventListener("click", onNoteKey);
    buildKeyboard();
    $("kbd").addEventListener("click", onKbdKey);
    $("kbd").addEventListener("mousedown", function (e) { e.preventDefault(); }); // the focus stays in the field
    // On the tap's click, not its focus: the screen changes only once the tap is over.
    $("note-text").addEventListener("click", openKeyboard);
    // The clock and the countdowns; also ends outcomes that timed out.
    S.tick = setInterval(function () { if (S.connected) render(false); }, 500);
    loadCatalogues().then(function () {
      render(false);
      connect();
    }, function () {
      // lockerd went away between the page and its catalogues: the start page
      // (offline.html) waits for it, so go back there.
      setTimeout(function () { location.reload(); }, 3000);
    });
  }

  start();
})();
