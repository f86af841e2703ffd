#!/usr/bin/env node
// test_ui.js - the kiosk screen in a real browser (Debian's Chromium, headless,
// driven by playwright-core) against a simulated station.
//
//   node tests/ui/test_ui.js        (LOCKERD, LOCKERCTL: binaries; CHROMIUM: browser)
//
// For a grant, each refusal class the simulation can produce, a return and an
// alarm, the screen must say the catalogue's words, in German and after one touch
// in English; axe-core must find no WCAG 2.1 A/AA violation in any of these
// views; nothing the server sends may carry a member, club or card id; the page
// must show "out of service" when lockerd stops and recover when it is back. On a
// second station with PINs: the PIN pad, and condition notes, the free text typed
// on the on-screen keyboard.
// Screenshots at 800x480 and 1024x600 go to tests/artefacts/ui/.
//
// Exit status: 0 all passed, 1 a check failed, 77 skipped (no browser or modules).
"use strict";

const fs = require("fs");
const http = require("http");
const path = require("path");
const { Station, waitFor, REPO } = require("./station");

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARTEFACTS = path.resolve(process.env.UI_ARTEFACTS || path.join(REPO, "tests", "artefacts", "ui"));
const SIZES = [[800, 480], [1024, 600]];
const DOM_TIMEOUT = 10000;

let playwright, axeSource;
try {
  playwright = require("playwright-core");
  axeSource = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
} catch (e) {
  console.log("test_ui: SKIPPED: playwright-core/axe-core not installed (run `npm ci` in tests/ui)");
  process.exit(77);
}
if (!fs.existsSync(CHROMIUM)) {
  console.log("test_ui: SKIPPED: no browser at " + CHROMIUM + " (apt-get install chromium)");
  process.exit(77);
}

const cat = {
  de: JSON.parse(fs.readFileSync(path.join(REPO, "ui", "i18n", "de.json"), "utf8")),
  en: JSON.parse(fs.readFileSync(path.join(REPO, "ui", "i18n", "en.json"), "utf8")),
};
function fill(s, vars) { return s.replace(/\{(\w+)\}/g, (m, k) => (vars && k in vars ? String(vars[k]) : m)); }
// The text of a catalogue entry up to its first placeholder that vars do not fill.
function prefix(lang, key, vars) {
  const s = fill(cat[lang][key], vars);
  const i = s.indexOf("{");
  return i < 0 ? s : s.slice(0, i);
}

let failures = 0;
let checks = 0;
function ok(cond, what) {
  checks++;
  if (!cond) { failures++; console.log("test_ui: FAIL: " + what); }
}

// ------------------------------------------------------------------ helpers

async function screen(page) {
  return page.evaluate(() => ({
    view: document.body.dataset.view,
    reason: document.body.dataset.reason,
    lang: document.documentElement.lang,
    title: document.getElementById("title").textContent,
    body: document.getElementById("body").textContent,
    extra: document.getElementById("extra").textContent,
    countdown: document.getElementById("countdown").hidden ? "" : document.getElementById("countdown-text").textContent,
    alarms: document.getElementById("alarms").hidden ? "" : document.getElementById("alarms-text").textContent,
    say: document.getElementById("say").textContent + document.getElementById("say-alarm").textContent,
    lit: Array.from(document.querySelectorAll("#station g.lit")).map((g) => Number(g.dataset.n)),
  }));
}

async function waitView(page, view, reason, what) {
  try {
    await page.waitForFunction(([v, r]) => document.body.dataset.view === v &&
      (r === null || document.body.dataset.reason === r), [view, reason], { timeout: DOM_TIMEOUT });
  } catch (e) {
    const s = await screen(page);
    throw new Error("screen did not show " + what + " (view " + view + ", reason " + reason + "); it shows " + JSON.stringify(s));
  }
}

async function setLang(page, lang) {
  if ((await screen(page)).lang === lang) return;
  await page.click("#lang");
  await page.waitForFunction((l) => document.documentElement.lang === l, lang, { timeout: DOM_TIMEOUT });
}

// The screen in both languages: expect(lang, screen) returns a list of [ok, what].
async function checkBoth(page, name, expect) {
  for (const lang of ["de", "en"]) {
    await setLang(page, lang);
    await page.waitForFunction(() => true);
    const s = await screen(page);
    for (const [cond, what] of expect(lang, s)) ok(cond, name + " [" + lang + "]: " + what + " — screen: " + JSON.stringify(s));
  }
  await setLang(page, "de");
}

const axeSeen = new Set();
async function axe(page, name) {
  await page.evaluate(axeSource + "\n;0");
  const res = await page.evaluate(() => window.axe.run(document, {
    runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] },
    resultTypes: ["violations"],
  }));
  for (const v of res.violations) {
    ok(false, "axe (" + name + "): " + v.id + ": " + v.help + " at " + v.nodes.map((n) => n.target.join(" ")).join(", "));
  }
  if (!res.violations.length) checks++;
  axeSeen.add(name);
}

// check(w, h), if given, runs at each size before its screenshot.
async function shots(page, name, check) {
  fs.mkdirSync(ARTEFACTS, { recursive: true });
  for (const [w, h] of SIZES) {
    await page.setViewportSize({ width: w, height: h });
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    // Nothing may overflow the screen: a kiosk cannot scroll.
    const fits = await page.evaluate(() => {
      const m = document.getElementById("message");
      return document.documentElement.scrollHeight <= innerHeight + 1 && m.scrollHeight <= m.clientHeight + 2;
    });
    ok(fits, name + " fits " + w + "x" + h + " without scrolling or clipping");
    if (check) await check(w, h);
    await page.screenshot({ path: path.join(ARTEFACTS, name + "-" + w + "x" + h + ".png") });
  }
  await page.setViewportSize({ width: SIZES[0][0], height: SIZES[0][1] });
}

// Every view is checked the same way: both languages, axe, screenshots.
async function outcome(page, name, view, reason, expect) {
  await waitView(page, view, reason, name);
  await checkBoth(page, name, expect);
  await axe(page, name);
  await shots(page, name);
}

function httpGet(url, headers = {}, maxMs = 0) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d) => { body += d; });
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body }));
      if (maxMs) setTimeout(() => { req.destroy(); resolve({ status: res.statusCode, headers: res.headers, body }); }, maxMs);
    });
    req.on("error", reject);
  });
}

// ------------------------------------------------------------------ card + PIN, notes

async function pinKeys(page, digits) {
  for (const d of digits) await page.click('#pinpad [data-digit="' + d + '"]');
  await page.click("#pin-ok");
}

async function pinAndNotes(page, first) {
  await first.stop();
  const P = new Station({ policy: ["pin_required = yes", "pin_timeout = 20s"] });
  try {
    await P.start();
    P.ctl(["club", "add", "club-p", "Verein P"]);
    const r = P.ctl(["member", "add", "--club", "club-p", "--name", "Mitglied P"]);
    const member = r.id || r.member || r.memberId;
    P.ctl(["card", "add", member, "--uid", "04A1B2C3D4E5E1"]);
    P.ctl(["booking", "add", "--club", "club-p", "--compartment", 1, "--from", P.at(-10), "--to", P.at(120)]);
    P.setPin(member, "2468");
    await page.goto(P.url);
    await waitView(page, "idle", null, "idle on the PIN station");

    // The PIN pad appears after the tap; nothing is unlocked yet.
    P.ctl(["sim", "tap", "04A1B2C3D4E5E1"]);
    await outcome(page, "pin", "pin", "pin", (l, s) => [
      [s.title === cat[l]["pin.title"], "PIN title"],
      [s.body === fill(cat[l]["pin.body"], { n: 1 }), "PIN body names the compartment"],
      [s.countdown.startsWith(prefix(l, "pin.countdown")), "PIN countdown"],
    ]);
    const keys = await page.$$eval("#pinpad button", (bs) => bs.map((b) => { const r = b.getBoundingClientRect(); return [r.width, r.height]; }));
    ok(keys.length === 13 && keys.every(([w, h]) => w >= 44 && h >= 44), "PIN keys are at least 44x44 px: " + JSON.stringify(keys));
    ok(P.ctl(["status"]).compartments[0].lock === "off", "no coil before the PIN");

    // Wrong PIN: refused with the attempts left, the pad stays.
    await pinKeys(page, "1111");
    await page.waitForFunction((t) => document.getElementById("pin-msg").textContent === t, fill(cat.de["pin.wrong"], { left: 2 }), { timeout: DOM_TIMEOUT });
    ok((await screen(page)).view === "pin", "still on the PIN pad after a wrong PIN");
    // Right PIN: the compartment opens.
    await pinKeys(page, "2468");
    await waitView(page, "granted", "pickup", "granted after the right PIN");
    ok((await screen(page)).lit[0] === 1, "compartment 1 lit after the PIN");
    ok(P.ctl(["status"]).compartments[0].state === "unlocking", "unlocking after the PIN");
    P.ctl(["sim", "door", 1, "open"]); P.ctl(["sim", "key", 1, "take"]); P.ctl(["sim", "door", 1, "close"]);
    await waitView(page, "done", "pickup", "pickup done");

    // Three wrong PINs: locked out, with the back-off in words.
    P.ctl(["sim", "tap", "04A1B2C3D4E5E1"]); // a return: no PIN
    await waitView(page, "granted", "return", "return without PIN");
    P.ctl(["sim", "door", 1, "open"]); P.ctl(["sim", "key", 1, "put"]); P.ctl(["sim", "door", 1, "close"]);

    // Notes after the return become events.
    await waitView(page, "done", "return", "return done");
    await page.waitForSelector("#notes:not([hidden])", { timeout: DOM_TIMEOUT });
    await checkBoth(page, "notes", (l, s) => [[s.title === cat[l]["done.return.title"], "returned title with notes"]]);
    await axe(page, "notes");
    await shots(page, "notes");
    const nb = await page.$$eval(".note-buttons button, #note-send", (bs) => bs.map((b) => { const r = b.getBoundingClientRect(); return [r.width, r.height]; }));
    ok(nb.length === 4 && nb.every(([w, h]) => w >= 44 && h >= 44), "note buttons at least 44x44 px: " + JSON.stringify(nb));
    await page.click('[data-note="floor-wet"]');

    // The free text on the on-screen keyboard, which a touch on the field opens.
    ok(await page.$eval("#kbd", (k) => k.hidden), "no keyboard before the field is touched");
    await page.click("#note-text");
    await page.waitForSelector("#kbd:not([hidden])", { timeout: DOM_TIMEOUT });
    for (const l of ["de", "en"]) {
      await setLang(page, l);
      const k = await page.evaluate(() => {
        const attr = (id, a) => document.getElementById(id).getAttribute(a);
        return { open: !document.getElementById("kbd").hidden, group: attr("kbd", "aria-label"), role: attr("kbd", "role"),
          shift: attr("kbd-shift", "aria-label"), back: attr("kbd-back", "aria-label"),
          space: document.getElementById("kbd-space").textContent, close: document.getElementById("kbd-close").textContent,
          types: Array.from(document.querySelectorAll("#kbd button")).every((b) => b.type === "button") };
      });
      ok(k.open && k.role === "group" && k.group === cat[l]["kbd.label"] && k.shift === cat[l]["kbd.shift"] &&
        k.back === cat[l]["kbd.backspace"] && k.space === cat[l]["kbd.space"] && k.close === cat[l]["kbd.close"] && k.types,
        "keyboard [" + l + "]: group and function keys named from the catalogue: " + JSON.stringify(k));
    }
    await setLang(page, "de");
    await axe(page, "notes-keyboard");
    await shots(page, "notes-keyboard", async (w, h) => {
      const k = await page.evaluate(() => {
        const box = (e) => e.getBoundingClientRect();
        const m = document.getElementById("message");
        const mr = box(m);
        const keys = Array.from(document.querySelectorAll("#kbd button"));
        const rows = Array.from(document.querySelectorAll("#kbd .kbd-row"));
        return {
          n: keys.length,
          small: keys.filter((b) => box(b).width < 44 || box(b).height < 44).map((b) => b.textContent + " " + box(b).width + "x" + box(b).height),
          outside: keys.filter((b) => box(b).left < mr.left || box(b).right > mr.right || box(b).bottom > mr.bottom).map((b) => b.textContent),
          overlap: rows.some((r) => Array.from(r.children).some((b, i, a) => i > 0 && box(b).left < box(a[i - 1]).right)),
          wide: document.documentElement.scrollWidth > innerWidth || m.scrollWidth > m.clientWidth,
          field: box(document.getElementById("note-text")).bottom <= box(document.getElementById("kbd")).top,
        };
      });
      ok(k.n === 49 && k.small.length === 0, "keyboard keys at least 44x44 px at " + w + "x" + h + ": " + JSON.stringify(k.small));
      ok(!k.outside.length && !k.overlap && !k.wide, "keyboard inside the box, no horizontal overflow, no overlapping keys at " +
        w + "x" + h + ": " + JSON.stringify(k));
      ok(k.field, "the field stays visible above the keyboard at " + w + "x" + h);
    });
    // Typed by touch: a capital (shift, for one letter), an umlaut, a wrong letter
    // taken back, spaces, a digit and punctuation.
    const key = (ch) => page.click('#kbd [data-key="' + ch + '"]');
    await page.click("#kbd-shift");
    ok(await page.evaluate(() => document.getElementById("kbd-shift").getAttribute("aria-pressed") === "true" &&
      document.querySelector('#kbd [data-key="t"]').textContent === "T"), "shift pressed shows capitals");
    await key("t");
    ok(await page.evaluate(() => document.getElementById("kbd-shift").getAttribute("aria-pressed") === "false" &&
      document.querySelector('#kbd [data-key="ü"]').textContent === "ü"), "shift lets go after one letter");
    for (const ch of "ürx") await key(ch);
    await page.click("#kbd-back");
    await page.click("#kbd-space");
    await key("3");
    await page.click("#kbd-space");
    for (const ch of "klemmt!") await key(ch);
    const typed = await page.evaluate(() => ({ value: document.getElementById("note-text").value, focus: document.activeElement.id }));
    ok(typed.value === "Tür 3 klemmt!" && typed.focus === "note-text", "the field shows what was typed and keeps the focus: " + JSON.stringify(typed));
    await page.click("#kbd-shift");
    await shots(page, "notes-keyboard-typed");
    await page.click("#kbd-shift");
    ok(await page.$eval("#kbd-shift", (b) => b.getAttribute("aria-pressed")) === "false", "a second touch on shift lets it go");
    await page.click("#note-send");
    await page.waitForFunction((t) => document.getElementById("notes-msg").textContent === t, cat.de["notes.thanks"], { timeout: DOM_TIMEOUT });
    ok(await page.$eval("#kbd", (k) => k.hidden), "the keyboard closes when the note is sent");
    await waitFor("two condition notes", () => {
      const notes = P.ctl(["events"]).filter((e) => e.type === "hall.conditionNote");
      return notes.length === 2 && notes[0].reason === "floor-wet" && notes[1].reason === "other" &&
        notes[1].detail.text === "Tür 3 klemmt!" && notes.every((e) => e.compartment === 1 && !e.memberId && !e.member);
    });
    ok(true, "notes recorded as hall.conditionNote");
    // A long text scrolls to its end as it is typed; maxlength holds for the keys
    // too; the close key closes the keyboard.
    await page.click("#note-text");
    await page.waitForSelector("#kbd:not([hidden])", { timeout: DOM_TIMEOUT });
    await page.$eval("#note-text", (f) => { f.value = "x".repeat(198); f.setSelectionRange(198, 198); f.scrollLeft = 0; });
    await key("a");
    ok(await page.$eval("#note-text", (f) => f.scrollLeft > 0 && f.scrollLeft + f.clientWidth >= f.scrollWidth - 1), "the end of a long text stays in sight");
    await key("b");
    await key("c");
    const full = await page.$eval("#note-text", (f) => f.value);
    ok(full.length === 200 && full.endsWith("ab"), "no more than 200 characters from the keyboard (" + full.length + ")");
    await page.click("#kbd-close");
    ok(await page.evaluate(() => document.getElementById("kbd").hidden && !document.getElementById("message").classList.contains("typing") &&
      document.querySelector('[data-note="lights-broken"]').getBoundingClientRect().height >= 44), "the close key closes the keyboard");

    P.ctl(["sim", "tap", "04A1B2C3D4E5E1"]);
    await waitView(page, "pin", "pin", "PIN pad again");
    ok((await page.$eval("#note-text", (f) => f.value)) === "", "unsent text is not left for the next person");
    await pinKeys(page, "0000");
    await page.waitForFunction(() => document.getElementById("pin-msg").textContent !== "", null, { timeout: DOM_TIMEOUT });
    await pinKeys(page, "0000");
    await page.waitForFunction((t) => document.getElementById("pin-msg").textContent === t, cat.de["pin.wrong.one"], { timeout: DOM_TIMEOUT });
    await pinKeys(page, "0000");
    await outcome(page, "pin-locked-out", "refused", "pin-locked-out", (l, s) => [
      [s.body.startsWith(prefix(l, "refused.pin-locked-out.until")) && /\d\d:\d\d/.test(s.body), "lockout with the time to come back"],
    ]);
    ok(P.ctl(["status"]).compartments[0].lock === "off", "no coil after a lockout");
    P.ctl(["sim", "clock", "advance", "61s"]);

    // Timeout: nothing unlocked.
    P.ctl(["sim", "tap", "04A1B2C3D4E5E1"]);
    await waitView(page, "pin", "pin", "PIN pad for the timeout");
    P.ctl(["sim", "clock", "advance", "21s"]);
    await outcome(page, "pin-timeout", "pincancel", "timeout", (l, s) => [
      [s.title === cat[l]["pin.timeout.title"], "timeout title"],
      [s.body === cat[l]["pin.timeout.body"], "nothing was opened"],
    ]);
    const acts = P.ctl(["sim", "outputs"]).lines.find((x) => x.line === "GPIO17").activations;
    ok(acts === 2, "the coil went on twice: the pickup after the right PIN and the return (" + acts + ")");
    await P.stop();
  } finally {
    P.cleanup();
    await first.start();
    await page.goto(first.url);
  }
}

// ------------------------------------------------------------------ the test

async function main() {
  const st = new Station();
  let browser;
  try {
    await st.start();
    const S = st;

    // Clubs, members and cards: one per refusal class.
    const members = {};
    const uids = { A: "04A1B2C3D4E501", A2: "04A1B2C3D4E502", B: "04A1B2C3D4E503", C: "04A1B2C3D4E504",
      D: "04A1B2C3D4E505", E: "04A1B2C3D4E506", R: "04A1B2C3D4E507", X: "04FFEEDDCCBB99" };
    const clubs = { A: "club-a", A2: "club-a", B: "club-b", C: "club-c", D: "club-d", E: "club-e", R: "club-r" };
    for (const c of ["club-a", "club-b", "club-c", "club-d", "club-e", "club-r"]) S.ctl(["club", "add", c, "Verein " + c]);
    for (const m of Object.keys(clubs)) {
      const r = S.ctl(["member", "add", "--club", clubs[m], "--name", "Mitglied " + m]);
      members[m] = r.id || r.member || r.memberId;
      S.ctl(["card", "add", members[m], "--uid", uids[m]]);
    }
    const revoke = S.ctl(["card", "add", members.R, "--uid", "04A1B2C3D4E508"]);
    S.ctl(["card", "revoke", revoke.id || revoke.card || revoke.credential]);
    S.ctl(["booking", "add", "--club", "club-a", "--compartment", 2, "--from", S.at(-10), "--to", S.at(120)]);
    S.ctl(["booking", "add", "--club", "club-b", "--compartment", 3, "--from", S.at(2 * 1440), "--to", S.at(2 * 1440 + 90)]);
    S.ctl(["booking", "add", "--club", "club-c", "--compartment", 4, "--from", S.at(180), "--to", S.at(240)]);
    S.ctl(["booking", "add", "--club", "club-d", "--compartment", 1, "--from", S.at(-5), "--to", S.at(60)]);
    S.ctl(["booking", "add", "--club", "club-e", "--compartment", 3, "--from", S.at(-5), "--to", S.at(60)]);

    // ---- plain HTTP: headers, types, the Host check, no personal data
    const idx = await httpGet(st.url);
    ok(idx.status === 200 && /text\/html/.test(idx.headers["content-type"]), "GET / is HTML");
    ok(/default-src 'self'/.test(idx.headers["content-security-policy"] || ""), "GET / has a CSP with default-src 'self'");
    ok(idx.headers["x-content-type-options"] === "nosniff", "GET / has X-Content-Type-Options: nosniff");
    ok(!/<script>|\son[a-z]+=/i.test(idx.body), "index.html has no inline script or handler");
    const js = await httpGet(st.url + "kiosk.js");
    ok(/text\/javascript/.test(js.headers["content-type"]), "kiosk.js is served as JavaScript");
    ok((await httpGet(st.url + "i18n/de.json")).headers["content-type"] === "application/json", "catalogues are JSON");
    ok((await httpGet(st.url + "../README.md")).status === 404, "no way out of [ui] dir");
    ok((await httpGet(st.url + ".hidden")).status === 404, "no dot files");
    ok((await httpGet(st.url, { Host: "evil.example:80" })).status === 421, "a foreign Host header is refused (DNS rebinding)");
    const sse = await httpGet(st.url + "api/events", {}, 300);
    ok(/text\/event-stream/.test(sse.headers["content-type"]) && /no-store/.test(sse.headers["cache-control"]),
      "the event stream is text/event-stream and not cached");

    // ---- the browser
    browser = await playwright.chromium.launch({
      executablePath: CHROMIUM, headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--font-render-hinting=none"],
    });
    const ctx = await browser.newContext({ viewport: { width: 800, height: 480 }, reducedMotion: "reduce" });
    const page = await ctx.newPage();
    const consoleErrors = [];
    page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
    page.on("pageerror", (e) => consoleErrors.push(String(e)));

    // A second listener on the stream, to look for personal data in all of it.
    let streamText = "";
    const streamReq = http.get(st.url + "api/events", (res) => { res.setEncoding("utf8"); res.on("data", (d) => { streamText += d; }); });
    streamReq.on("error", () => {});

    await page.goto(st.url);
    await outcome(page, "idle", "idle", null, (l, s) => [
      [s.title === cat[l]["idle.title"], "idle title"],
      [s.body === cat[l]["idle.body"], "idle body"],
    ]);
    ok((await page.$$eval("#station g[data-n]", (g) => g.length)) === 4, "the drawing shows 4 compartments");
    const target = await page.$eval("#lang", (b) => { const r = b.getBoundingClientRect(); return [r.width, r.height]; });
    ok(target[0] >= 44 && target[1] >= 44, "the language button is at least 44x44 px (" + target + ")");

    // ---- grant, pickup
    S.ctl(["sim", "tap", uids.A]);
    await outcome(page, "granted", "granted", "pickup", (l, s) => [
      [s.title === fill(cat[l]["granted.pickup.title"], { n: 2 }), "grant title names compartment 2"],
      [s.body === cat[l]["granted.pickup.body"], "grant body: open, take, close"],
      [s.countdown.startsWith(prefix(l, "countdown.open")) || s.countdown === cat[l]["countdown.late"], "countdown to open the door"],
      [s.lit.length === 1 && s.lit[0] === 2, "compartment 2 lit in the drawing"],
      [s.say.includes(fill(cat.de["granted.pickup.title"], { n: 2 })), "announced in the live region"],
    ]);
    // busy: a co-trainer taps while compartment 2 is unlocking
    S.ctl(["sim", "tap", uids.A2]);
    await outcome(page, "refused-busy", "refused", "compartment-busy", (l, s) => [
      [s.title === cat[l]["refused.title"], "refusal title"],
      [s.body === cat[l]["refused.compartment-busy"], "busy text"],
    ]);
    S.ctl(["sim", "door", 2, "open"]);
    S.ctl(["sim", "key", 2, "take"]);
    // The door opening records no event: the status poll brings it.
    S.ctl(["sim", "door", 2, "close"]);
    await outcome(page, "pickup-done", "done", "pickup", (l, s) => [
      [s.title === cat[l]["done.pickup.title"], "key taken title"],
      [s.body === fill(cat[l]["done.pickup.body"], { n: 2 }), "key taken body"],
    ]);

    // ---- refusals
    const refusals = [
      ["unknown-card", ["sim", "tap", uids.X], (l) => cat[l]["refused.unknown-card"]],
      ["revoked", ["sim", "tap", "04A1B2C3D4E508"], (l) => cat[l]["refused.revoked"]],
      ["no-booking", ["sim", "tap", uids.B], (l) => cat[l]["refused.no-booking"]],
      ["outside-pickup-window", ["sim", "tap", uids.C], (l) => prefix(l, "refused.outside-pickup-window.early")],
      ["insecure-card", ["sim", "tap", uids.C, "--card", "uid"], (l) => cat[l]["refused.insecure-card"]],
      ["card-auth-failed", ["sim", "tap", uids.C, "--card", "clone"], (l) => cat[l]["refused.card-auth-failed"]],
    ];
    for (const [reason, tap, text] of refusals) {
      const r = S.ctl(tap);
      ok(r.reason === reason || r.refusal === reason || JSON.stringify(r).includes(reason), "lockerctl says " + reason + ": " + JSON.stringify(r));
      await outcome(page, "refused-" + reason, "refused", reason, (l, s) => {
        const checksFor = [
          [s.title === cat[l]["refused.title"], "refusal title"],
          [s.body.startsWith(text(l)) && s.body.length > 10, "refusal text"],
          [s.say.length > 0, "announced"],
        ];
        if (reason === "no-booking") checksFor.push([s.extra.startsWith(prefix(l, "refused.next")), "next booking time shown"]);
        if (reason === "outside-pickup-window") checksFor.push([/\d\d:\d\d/.test(s.body), "the time from which the key can be taken"]);
        return checksFor;
      });
    }
    // key-already-out: a service open takes compartment 1's key; club-d's trainer taps
    S.ctl(["open", 1, "--reason", "ui test"]);
    await waitView(page, "service", null, "service open");
    S.ctl(["sim", "door", 1, "open"]);
    S.ctl(["sim", "key", 1, "take"]);
    S.ctl(["sim", "door", 1, "close"]);
    S.ctl(["sim", "tap", uids.D]);
    await outcome(page, "refused-key-already-out", "refused", "key-already-out", (l, s) => [
      [s.body === cat[l]["refused.key-already-out"], "key out text"],
    ]);
    // out-of-service: compartment 3 disabled; club-e's trainer taps
    S.ctl(["disable", 3, "--reason", "ui test"]);
    S.ctl(["sim", "tap", uids.E]);
    await outcome(page, "refused-out-of-service", "refused", "out-of-service", (l, s) => [
      [s.body === cat[l]["refused.out-of-service"], "out of service text"],
      [s.lit.length === 1 && s.lit[0] === 3, "compartment 3 marked"],
    ]);

    // ---- return
    S.ctl(["sim", "tap", uids.A]);
    await outcome(page, "granted-return", "granted", "return", (l, s) => [
      [s.title === fill(cat[l]["granted.return.title"], { n: 2 }), "return title"],
      [s.body === cat[l]["granted.return.body"], "return body"],
    ]);
    S.ctl(["sim", "door", 2, "open"]);
    await page.waitForFunction((t) => document.getElementById("body").textContent === t, cat.de["open.return.body"], { timeout: DOM_TIMEOUT });
    ok((await screen(page)).countdown.startsWith(prefix("de", "countdown.close")), "countdown to close the door");
    S.ctl(["sim", "key", 2, "put"]);
    S.ctl(["sim", "door", 2, "close"]);
    await outcome(page, "returned", "done", "return", (l, s) => [
      [s.title === cat[l]["done.return.title"], "returned title"],
      [s.body === fill(cat[l]["done.return.body"], { n: 2 }), "returned body"],
    ]);

    // ---- alarm: a door forced open
    S.ctl(["sim", "door", 4, "open"]);
    await outcome(page, "alarm-door-forced", "alarm", "door.forced", (l, s) => [
      [s.title === cat[l]["alarm.title"], "alarm title"],
      [s.body === fill(cat[l]["alarm.door.forced"], { n: 4 }), "forced text"],
      [s.alarms.includes(fill(cat[l]["alarm.door.forced"], { n: 4 })), "alarm banner"],
      [s.lit.includes(4), "compartment 4 marked"],
    ]);
    S.ctl(["sim", "door", 4, "close"]);
    await page.waitForFunction(() => document.getElementById("alarms").hidden, null, { timeout: DOM_TIMEOUT });

    // ---- personal data: nothing in the stream or the status names anyone
    const status = await httpGet(st.url + "api/status");
    const seen = streamText + status.body;
    for (const m of Object.keys(members)) ok(!seen.includes(members[m]), "member id of " + m + " not sent to the screen");
    for (const c of ["club-a", "club-d", "club-e"]) ok(!seen.includes(c), "club id " + c + " not sent to the screen");
    for (const u of Object.values(uids)) ok(!seen.toLowerCase().includes(u.toLowerCase()), "card UID " + u + " not sent");
    ok(!/operator|hash|credential|"member"/.test(seen), "no operator, hash, credential or member fields");
    ok(/event: station/.test(streamText) && /event: status/.test(streamText), "the stream carried events and status");
    streamReq.destroy();

    // ---- lockerd stops: out of service; it comes back: the screen recovers
    await st.stop();
    await outcome(page, "offline", "offline", null, (l, s) => [
      [s.title === cat[l]["offline.title"], "offline title"],
    ]);
    await st.start();
    await waitView(page, "idle", null, "the screen back after lockerd restarted");
    ok(true, "recovered");

    // ---- card + PIN and condition notes, on a second station that wants PINs
    await pinAndNotes(page, st);

    const csp = consoleErrors.filter((e) => /Content.Security.Policy|Refused to/i.test(e));
    ok(csp.length === 0, "no CSP violations: " + csp.join(" | "));
    const other = consoleErrors.filter((e) => !/Content.Security.Policy|Refused to|ERR_CONNECTION_REFUSED|net::ERR|EventSource|Failed to load resource/i.test(e));
    ok(other.length === 0, "no script errors: " + other.join(" | "));

    const stopped = await st.stop();
    ok(stopped && stopped.code === 0, "lockerd exits 0 on SIGTERM");
    ok(!/ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer/.test(st.stderr()), "no sanitizer findings");
  } catch (e) {
    failures++;
    console.log("test_ui: FAIL: " + (e.stack || e));
    console.log("---- lockerd stderr (tail) ----\n" + st.stderr().split("\n").slice(-30).join("\n"));
  } finally {
    if (browser) await browser.close();
    st.cleanup();
  }
  console.log("test_ui: " + checks + " checks, " + failures + " failed; " + axeSeen.size +
    " views checked with axe-core; screenshots in " + path.relative(process.cwd(), ARTEFACTS));
  process.exit(failures ? 1 : 0);
}

main();
