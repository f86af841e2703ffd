#!/usr/bin/env node
// test_console.js - the manager console (lockerd-console) in Debian's Chromium,
// headless, over HTTPS with a self-signed test certificate, against a simulated
// station: a manager logs in, creates a weekly reservation with a holiday
// exception from ui/console/holidays-mv.json; a tap during an occurrence unlocks,
// a tap on the holiday is refused; the key shows as out; an alarm is
// acknowledged and logged with the account. Negative: CSRF (no token, wrong
// token), a wrong password, the login rate limit, a technician-only action by a
// manager. axe-core: no WCAG 2.1 A/AA violation in either language; a phone-sized
// viewport does not overflow. Time moves only with `lockerctl sim clock advance`.
//
// Exit status: 0 all passed, 1 a check failed, 77 skipped.
"use strict";

const { execFileSync, spawn } = require("child_process");
const fs = require("fs");
const https = require("https");
const os = require("os");
const path = require("path");

const REPO = path.resolve(__dirname, "..", "..");
const UIMOD = path.join(REPO, "tests", "ui", "node_modules");
const { Station, waitFor, freePort } = require(path.join(REPO, "tests", "ui", "station.js"));
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const CONSOLE = path.resolve(process.env.CONSOLE || path.join(REPO, "build", "lockerd-console"));
const ARTEFACTS = path.join(REPO, "tests", "artefacts", "console");
const T = 15000;

let playwright, axeSource;
try {
  playwright = require(path.join(UIMOD, "playwright-core"));
  axeSource = fs.readFileSync(path.join(UIMOD, "axe-core", "axe.min.js"), "utf8");
} catch (e) {
  console.log("test_console: SKIPPED: playwright-core/axe-core not installed (npm ci in tests/ui)");
  process.exit(77);
}
if (!fs.existsSync(CHROMIUM)) {
  console.log("test_console: SKIPPED: no browser at " + CHROMIUM);
  process.exit(77);
}

let failures = 0, checks = 0;
function ok(cond, what) {
  checks++;
  if (!cond) { failures++; console.log("test_console: FAIL: " + what); } else console.log("test_console: ok: " + what);
}

// The station with this user allowed to act for console accounts.
class ConsoleStation extends Station {
  writeConfig() {
    super.writeConfig();
    fs.appendFileSync(this.conf, "\n[control]\nconsoles = " + os.userInfo().username + "\n");
  }
}

function request(port, method, p, { body, headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? null : (typeof body === "string" ? body : JSON.stringify(body));
    const h = Object.assign({}, headers);
    if (data !== null) { h["Content-Length"] = Buffer.byteLength(data); if (!h["Content-Type"]) h["Content-Type"] = "application/json"; }
    const req = https.request({ host: "127.0.0.1", port, method, path: p, headers: h, rejectUnauthorized: false }, (res) => {
      let b = "";
      res.setEncoding("utf8");
      res.on("data", (d) => { b += d; });
      res.on("end", () => { let j = null; try { j = JSON.parse(b); } catch (e) { /* text */ } resolve({ status: res.statusCode, headers: res.headers, body: b, json: j }); });
    });
    req.on("error", reject);
    if (data !== null) req.write(data);
    req.end();
  });
}

async function login(port, account, password) {
  const r = await request(port, "POST", "/api/login", { body: { account, password } });
  const cookie = (r.headers["set-cookie"] || []).map((c) => c.split(";")[0]).join("; ");
  return { r, cookie, csrf: r.json && r.json.csrf };
}

async function axe(page, name) {
  await page.evaluate(axeSource + "\n;0");
  const res = await page.evaluate(() => window.axe.run(document, {
    runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] }, resultTypes: ["violations"] }));
  ok(res.violations.length === 0, "axe (" + name + "): " + res.violations.map((v) => v.id + " at " + v.nodes.map((n) => n.target.join(" ")).join(", ")).join("; "));
}

async function views(page, name) {
  for (const lang of ["de", "en"]) {
    if (await page.evaluate(() => document.documentElement.lang) !== lang) {
      await page.click("#lang");
      await page.waitForFunction((l) => document.documentElement.lang === l, lang, { timeout: T });
    }
    await axe(page, name + " [" + lang + "]");
  }
  fs.mkdirSync(ARTEFACTS, { recursive: true });
  await page.setViewportSize({ width: 375, height: 740 });
  const fits = await page.evaluate(() => document.documentElement.scrollWidth <= innerWidth + 1);
  ok(fits, name + ": no horizontal overflow at 375 px (phone)");
  await page.screenshot({ path: path.join(ARTEFACTS, name + "-phone.png"), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.screenshot({ path: path.join(ARTEFACTS, name + "-desktop.png"), fullPage: true });
  await page.click("#lang");
  await page.waitForFunction(() => document.documentElement.lang === "de", null, { timeout: T });
}

// The first school holiday that starts at least 9 days after `today` and whose
// day a week before is no holiday: [week before, holiday, week after].
function pickHoliday(today) {
  const hol = JSON.parse(fs.readFileSync(path.join(REPO, "ui", "console", "holidays-mv.json"), "utf8"));
  const add = (d, n) => { const x = new Date(d + "T00:00:00Z"); x.setUTCDate(x.getUTCDate() + n); return x.toISOString().slice(0, 10); };
  const isHol = (d) => hol.school.some((h) => h.from <= d && d <= h.to) || hol.public.some((h) => h.date === d);
  for (const h of hol.school) {
    if (h.from < add(today, 9)) continue;
    const first = add(h.from, -7);
    if (!isHol(first)) return { first, holiday: h.from, until: add(h.from, 7), name: h.name };
  }
  throw new Error("ui/console/holidays-mv.json has no school holiday after " + today + ": extend the list");
}

async function main() {
  const st = new ConsoleStation();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "lockerd-console-"));
  let proc = null, browser = null;
  try {
    await st.start();
    // Certificate and accounts.
    execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
      "-keyout", path.join(dir, "key.pem"), "-out", path.join(dir, "cert.pem"), "-days", "2", "-subj", "/CN=localhost"], { stdio: "ignore" });
    const accounts = path.join(dir, "console.accounts");
    const add = (name, role, pw) => execFileSync(CONSOLE, ["-a", accounts, "--add-account", name, role], { input: pw + "\n" });
    add("mgr", "manager", "manager-pass-1");
    add("tech", "technician", "technician-pass-1");
    add("victim", "manager", "victim-pass-12");
    const text = fs.readFileSync(accounts, "utf8");
    ok(/^mgr:manager:scrypt:15:8:1:[0-9a-f]{32}:[0-9a-f]{64}$/m.test(text) && !text.includes("manager-pass-1"), "accounts file holds scrypt hashes, no password");

    const port = await freePort();
    const log = fs.openSync(path.join(dir, "console.log"), "w");
    proc = spawn(CONSOLE, ["-l", "127.0.0.1:" + port, "-s", st.sock, "-d", path.join(REPO, "ui", "console"), "-a", accounts,
      "--cert", path.join(dir, "cert.pem"), "--key", path.join(dir, "key.pem"),
      // As root (CI), stay root: the test's lockerd and its socket are root's.
      "--user", os.userInfo().username], { stdio: ["ignore", "ignore", log] });
    fs.closeSync(log);
    await waitFor("the console to answer", async () => (await request(port, "GET", "/")).status === 200, T);
    const base = "https://127.0.0.1:" + port + "/";

    // ---- HTTP level: headers, HTTPS only
    const idx = await request(port, "GET", "/");
    ok(/default-src 'none'/.test(idx.headers["content-security-policy"] || "") && /script-src 'self'/.test(idx.headers["content-security-policy"]), "strict CSP");
    ok(!/<script>|\son[a-z]+=/i.test(idx.body), "no inline script or handler");
    ok((await request(port, "GET", "/../README.md")).status === 404, "no way out of the page directory");
    ok((await request(port, "GET", "/api/status")).status === 401, "the API needs a session");

    // ---- negative: wrong password, rate limit, CSRF, technician-only
    ok((await login(port, "mgr", "wrong-password")).r.status === 401, "a wrong password is refused (401)");
    for (let i = 0; i < 5; i++) await login(port, "victim", "wrong-" + i);
    const thr = await login(port, "victim", "victim-pass-12");
    ok(thr.r.status === 429 && Number(thr.r.headers["retry-after"]) > 0 && !thr.cookie, "after 5 failures even the right password is throttled (429, Retry-After)");
    const m = await login(port, "mgr", "manager-pass-1");
    ok(m.r.status === 200 && m.csrf && m.csrf.length === 64, "manager login over the API");
    const sc = (await request(port, "POST", "/api/login", { body: { account: "mgr", password: "manager-pass-1" } })).headers["set-cookie"][0];
    ok(/Secure/.test(sc) && /HttpOnly/.test(sc) && /SameSite=Strict/.test(sc), "session cookie is Secure; HttpOnly; SameSite=Strict");
    st.ctl(["club", "add", "club-x", "Verein X"]);
    const change = { cmd: "booking.add", args: { club: "club-x", compartment: 4, from: st.at(60), to: st.at(120) } };
    const noTok = await request(port, "POST", "/api/cmd", { body: change, headers: { Cookie: m.cookie } });
    ok(noTok.status === 403, "a change without CSRF token is refused (" + noTok.status + ")");
    const badTok = await request(port, "POST", "/api/cmd", { body: change, headers: { Cookie: m.cookie, "X-CSRF-Token": "0".repeat(64) } });
    ok(badTok.status === 403, "a change with a wrong CSRF token is refused (" + badTok.status + ")");
    const form = await request(port, "POST", "/api/cmd", { body: "cmd=booking.add", headers: { Cookie: m.cookie, "X-CSRF-Token": m.csrf, "Content-Type": "application/x-www-form-urlencoded" } });
    ok(form.status === 403, "a form post is refused");
    ok(st.ctl(["booking", "list"]).bookings.length === 0, "no booking was made by the refused changes");
    const dis = await request(port, "POST", "/api/cmd", { body: { cmd: "disable", args: { compartment: 4, reason: "test" } }, headers: { Cookie: m.cookie, "X-CSRF-Token": m.csrf } });
    ok(dis.status === 403 && /technician/.test(dis.body), "a manager may not take a compartment out of service (403: " + dis.body + ")");
    const tech = await login(port, "tech", "technician-pass-1");
    const dis2 = await request(port, "POST", "/api/cmd", { body: { cmd: "disable", args: { compartment: 4, reason: "lamp" } }, headers: { Cookie: tech.cookie, "X-CSRF-Token": tech.csrf } });
    const clr = await request(port, "POST", "/api/cmd", { body: { cmd: "clear", args: { compartment: 4, reason: "fixed" } }, headers: { Cookie: tech.cookie, "X-CSRF-Token": tech.csrf } });
    ok(dis2.status === 200 && clr.status === 200, "a technician may (" + dis2.body + clr.body + ")");
    const evs = st.ctl(["events"]);
    ok(evs.some((e) => e.type === "service.disabled" && e.operator === "console:tech"), "the technician's change is logged as console:tech");

    // ---- a card enrolled from the console by tapping it while the request waits
    st.ctl(["club", "add", "club-e", "Enrol Club"]);
    const enrollee = st.ctl(["member", "add", "--club", "club-e", "--name", "Eve Enrolled"]).id;
    const pending = request(port, "POST", "/api/cmd", { body: { cmd: "card.enroll", args: { member: enrollee, timeoutMs: 20000 } }, headers: { Cookie: m.cookie, "X-CSRF-Token": m.csrf } });
    let enrolled = null;
    // Taps until the enrolment has taken one: a tap before lockerd waits is an
    // ordinary (refused) tap; the answer ends the loop, 40 tries at most.
    for (let i = 0; i < 40 && !enrolled; i++) {
      st.ctl(["sim", "tap", "04C0FFEE00AA11"], true);
      enrolled = await Promise.race([pending, new Promise((r) => setTimeout(() => r(null), 250))]);
    }
    ok(enrolled && enrolled.status === 200 && enrolled.json && enrolled.json.result && enrolled.json.result.member === enrollee,
       "a card is enrolled from the console by a tap (" + (enrolled ? enrolled.body : "no answer") + ")");
    ok(st.ctl(["events"]).some((e) => e.type === "card.added" && e.operator === "console:mgr"),
       "the enrolment is logged as console:mgr");

    // ---- the browser
    st.ctl(["club", "add", "club-a", "SV Warnemünde"]);
    const member = st.ctl(["member", "add", "--club", "club-a", "--name", "Anna Trainer"]).id;
    const UID = "04A1B2C3D4E5F6";
    st.ctl(["card", "add", member, "--uid", UID]);
    browser = await playwright.chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
    const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
    const page = await ctx.newPage();
    const consoleErrors = [];
    // Script errors; refused requests (401, 403, 409) are expected answers.
    page.on("pageerror", (err) => consoleErrors.push(String(err)));
    await page.goto(base);
    await page.waitForSelector("#login:not([hidden])", { timeout: T });
    await views(page, "login");

    // Wrong password in the page
    await page.fill("#account", "mgr");
    await page.fill("#password", "not-the-password");
    await page.click("#login-form button[type=submit]");
    await page.waitForFunction(() => document.getElementById("login-msg").textContent.length > 0, null, { timeout: T });
    ok(await page.isVisible("#login"), "the page stays on the login after a wrong password");

    await page.fill("#account", "mgr");
    await page.fill("#password", "manager-pass-1");
    await page.click("#login-form button[type=submit]");
    await page.waitForSelector("#app:not([hidden])", { timeout: T });
    await page.waitForSelector("#comps tbody tr", { timeout: T });
    await views(page, "status");

    // A weekly reservation with a holiday exception.
    const now = st.now();
    const today = new Intl.DateTimeFormat("en-CA", { timeZone: "Europe/Berlin", year: "numeric", month: "2-digit", day: "2-digit" }).format(now);
    const plan = pickHoliday(today);
    await page.click("button[data-tab=bookings]");
    await page.waitForSelector("#b-club option", { state: "attached", timeout: T });
    await page.selectOption("#b-club", "club-a");
    await page.selectOption("#b-comp", "2");
    await page.fill("#b-date", plan.first);
    await page.fill("#b-from", "18:00");
    await page.fill("#b-to", "20:00");
    await page.check("#b-weekly");
    await page.fill("#b-until", plan.until);
    await page.check("#b-holidays");
    await page.click("#booking-form button[type=submit]");
    await page.waitForFunction(() => /ok/.test(document.getElementById("msg").className), null, { timeout: T });
    const made = await page.textContent("#msg");
    ok(made.includes(plan.holiday), "the holiday " + plan.holiday + " (" + plan.name + ") is left out: " + made);
    const list = st.ctl(["booking", "list"]).bookings.filter((b) => b.club === "club-a").sort((a, b) => a.start - b.start);
    ok(list.length >= 1, "the series has bookings");
    await page.waitForSelector("#week .booking", { timeout: T });
    await views(page, "bookings");

    // A conflicting one is refused with a clear message.
    await page.uncheck("#b-weekly");
    await page.selectOption("#b-club", "club-x");
    await page.fill("#b-date", plan.first);
    await page.fill("#b-from", "19:00");
    await page.fill("#b-to", "21:00");
    await page.click("#booking-form button[type=submit]");
    await page.waitForFunction(() => /error/.test(document.getElementById("msg").className), null, { timeout: T });
    const conflictMsg = await page.textContent("#msg");
    ok(conflictMsg.includes(list[0].id) && /overlapping/.test(conflictMsg), "conflict names the booking: " + conflictMsg);

    // The first occurrence: the tap unlocks.
    const adv = (ms) => st.ctl(["sim", "clock", "advance", Math.ceil(ms / 1000) + "s"]);
    adv(list[0].start + 10 * 60000 - st.now().getTime());
    const tap1 = st.ctl(["sim", "tap", UID]);
    ok(tap1.outcome === "pickup" && tap1.compartment === 2, "a tap during the first occurrence unlocks compartment 2: " + JSON.stringify(tap1));
    st.ctl(["sim", "door", "2", "open"]);
    st.ctl(["sim", "key", "2", "take"]);
    st.ctl(["sim", "door", "2", "close"]);
    await page.click("button[data-tab=status]");
    await page.waitForFunction(() => { const c = document.querySelector("#comps tr[data-n='2'] td[data-key]"); return c && c.dataset.key === "out"; }, null, { timeout: T });
    ok(true, "the console shows the key of compartment 2 as out");
    const row = await page.textContent("#comps tr[data-n='2']");
    ok(row.includes("club-a"), "…held by club-a: " + row);
    // Back with the key.
    const tap2 = st.ctl(["sim", "tap", UID]);
    ok(tap2.outcome === "return", "return: " + JSON.stringify(tap2));
    st.ctl(["sim", "door", "2", "open"]);
    st.ctl(["sim", "key", "2", "put"]);
    st.ctl(["sim", "door", "2", "close"]);

    // The holiday: refused.
    const hol = new Date(list[0].start);
    hol.setUTCDate(hol.getUTCDate() + 7);
    adv(hol.getTime() + 10 * 60000 - st.now().getTime());
    const tap3 = st.ctl(["sim", "tap", UID]);
    ok(tap3.outcome === "refused" && tap3.reason === "no-booking", "a tap on the holiday is refused: " + JSON.stringify(tap3));

    // An alarm, acknowledged from the console.
    st.ctl(["sim", "door", "3", "open"]);
    await page.click("button[data-tab=status]");
    await page.waitForSelector("li[data-alarm='door.forced/3'] button", { timeout: T });
    await views(page, "alarm");
    await page.click("li[data-alarm='door.forced/3'] button");
    await page.waitForSelector("li[data-alarm='door.forced/3'] .acked", { timeout: T });
    const ack = st.ctl(["events"]).filter((e) => e.type === "alarm.acknowledged");
    ok(ack.length === 1 && ack[0].operator === "console:mgr" && ack[0].compartment === 3 && ack[0].reason === "door.forced", "alarm.acknowledged logged with the account: " + JSON.stringify(ack[0]));
    st.ctl(["sim", "door", "3", "close"]);
    const created = st.ctl(["events"]).filter((e) => e.type === "booking.created");
    ok(created.length === list.length && created.every((e) => e.operator === "console:mgr"), "every booking.created names console:mgr");

    // Technician-only action in the page, as a manager.
    await page.selectOption("#svc-comp", "1");
    await page.selectOption("#svc-action", "disable");
    await page.fill("#svc-reason", "test");
    await page.click("#service-form button[type=submit]");
    await page.waitForFunction(() => /error/.test(document.getElementById("msg").className), null, { timeout: T });
    ok(/technician/.test(await page.textContent("#msg")), "the page says a manager may not disable");

    // Events, CSV, report, directory views.
    await page.click("button[data-tab=events]");
    await page.waitForSelector("#events tbody tr", { timeout: T });
    await views(page, "events");
    const csv = await request(port, "GET", "/api/events.csv?type=alarm.", { headers: { Cookie: m.cookie } });
    ok(csv.status === 200 && /text\/csv/.test(csv.headers["content-type"]) && csv.body.includes("console:mgr"), "CSV export of the filtered log");
    await page.click("button[data-tab=report]");
    await page.waitForSelector("#report thead tr", { timeout: T });
    await views(page, "report");
    await page.click("button[data-tab=directory]");
    await page.waitForSelector("#members tbody tr", { timeout: T });
    await views(page, "directory");
    ok(consoleErrors.length === 0, "no script errors in the page: " + consoleErrors.join(" | "));
  } catch (e) {
    failures++;
    console.log("test_console: FAIL: " + (e.stack || e));
    console.log(st.stderr().split("\n").slice(-30).join("\n"));
    try { console.log(fs.readFileSync(path.join(dir, "console.log"), "utf8").split("\n").slice(-30).join("\n")); } catch (x) { /* none */ }
  } finally {
    if (browser) await browser.close();
    if (proc) proc.kill("SIGTERM");
    await st.stop().catch(() => {});
    st.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  console.log("test_console: " + checks + " checks, " + failures + " failed");
  process.exit(failures ? 1 : 0);
}

main();
