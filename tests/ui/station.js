// station.js - a simulated lockerd for the browser tests and the latency benchmark,
// the node counterpart of tests/scenario/harness.py: its own temporary directory,
// sim GPIO, reader and clock, driven through lockerctl; waits are for observable
// things, always with a timeout.
"use strict";

const { execFileSync, spawn } = require("child_process");
const fs = require("fs");
const net = require("net");
const os = require("os");
const path = require("path");

const REPO = path.resolve(__dirname, "..", "..");
const LOCKERD = path.resolve(process.env.LOCKERD || path.join(REPO, "build", "lockerd"));
const LOCKERCTL = path.resolve(process.env.LOCKERCTL || path.join(REPO, "build", "lockerctl"));

const LINES = {
  1: ["GPIO17", "GPIO27", "GPIO22"],
  2: ["GPIO5", "GPIO6", "GPIO13"],
  3: ["GPIO19", "GPIO26", "GPIO21"],
  4: ["GPIO20", "GPIO16", "GPIO12"],
};

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = srv.address().port;
      srv.close(() => resolve(port));
    });
  });
}

async function waitFor(what, fn, timeoutMs = 10000, intervalMs = 20) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let v;
    try { v = await fn(); } catch (e) { v = undefined; }
    if (v) return v;
    if (Date.now() > deadline) throw new Error("timed out after " + timeoutMs + " ms waiting for " + what);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

class Station {
  constructor(opts = {}) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), "lockerd-ui-"));
    this.sock = path.join(this.dir, "run", "control.sock");
    this.conf = path.join(this.dir, "lockerd.conf");
    this.port = opts.port;
    this.speech = opts.speech || "no";
    this.policy = opts.policy || []; // extra [policy] lines, e.g. "pin_required = yes"

    this.proc = null;
    this.starts = 0;
  }

  get url() { return "http://127.0.0.1:" + this.port + "/"; }

  writeConfig() {
    const out = [
      "# written by tests/ui/station.js",
      "[station]", "id = st-ui", "name = Sporthalle Teststraße",
      "state_dir = " + path.join(this.dir, "state"), "runtime_dir = " + path.join(this.dir, "run"),
      "sim_clock = yes", "",
      "[reader]", "backend = sim", "auth = desfire", "",
      "[gpio]", "backend = sim", "max_energize = 5s", "tamper = GPIO4, active-low, pull-up", "",
      "[ui]", "enabled = yes", "listen = 127.0.0.1:" + this.port, "dir = " + path.join(REPO, "ui"),
      "language = de", "speech = " + this.speech,
    ];
    if (this.policy.length) out.push("", "[policy]", ...this.policy);
    for (const n of Object.keys(LINES)) {
      const [lock, door, key] = LINES[n];
      out.push("", "[compartment." + n + "]", "lock = " + lock, "door = " + door + ", active-low, pull-up",
        "key = " + key + ", active-low, pull-up", "key_label = Halle " + n, "hall = halle-" + n);
    }
    fs.writeFileSync(this.conf, out.join("\n") + "\n");
  }

  async start() {
    if (!this.port) this.port = await freePort();
    this.writeConfig();
    this.starts++;
    const log = fs.openSync(path.join(this.dir, "lockerd-stderr-" + this.starts + ".log"), "w");
    const env = Object.assign({}, process.env);
    delete env.LOCKERD_SOCKET;
    env.ASAN_OPTIONS = env.ASAN_OPTIONS || "detect_leaks=1";
    this.proc = spawn(LOCKERD, ["-c", this.conf], { stdio: ["ignore", "ignore", log], env, cwd: this.dir });
    fs.closeSync(log);
    this.exited = new Promise((resolve) => this.proc.on("exit", (code, sig) => resolve({ code, sig })));
    await waitFor("lockerd to answer status", () => {
      if (this.proc.exitCode !== null) throw new Error("lockerd exited during start:\n" + this.stderr());
      return this.ctl(["status"], true) !== null;
    }, 15000);
  }

  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return null;
    this.proc.kill("SIGTERM");
    const r = await Promise.race([this.exited, new Promise((res) => setTimeout(() => res(null), 15000))]);
    if (r === null) { this.proc.kill("SIGKILL"); throw new Error("lockerd did not stop"); }
    return r;
  }

  stderr() {
    let text = "";
    for (let i = 1; i <= this.starts; i++) {
      try { text += fs.readFileSync(path.join(this.dir, "lockerd-stderr-" + i + ".log"), "utf8"); } catch (e) { /* none */ }
    }
    return text;
  }

  cleanup() {
    if (this.proc && this.proc.exitCode === null) this.proc.kill("SIGKILL");
    if (process.env.LOCKERD_KEEP_TMP) console.error("keeping " + this.dir);
    else fs.rmSync(this.dir, { recursive: true, force: true });
  }

  // `lockerctl --json ARGS`: parsed output; throws on failure unless soft.
  ctl(args, soft = false) {
    try {
      const out = execFileSync(LOCKERCTL, ["-s", this.sock, "--json", ...args.map(String)],
        { stdio: ["ignore", "pipe", "pipe"], timeout: 30000 });
      const text = out.toString().trim();
      return text ? JSON.parse(text) : {};
    } catch (e) {
      if (soft) return null;
      // A refused tap exits 1 with its JSON answer: that is an answer, not a failure.
      if (e.status === 1 && e.stdout && e.stdout.toString().trim().startsWith("{")) {
        return JSON.parse(e.stdout.toString());
      }
      throw new Error("lockerctl " + args.join(" ") + " failed (" + e.status + "): " +
        (e.stderr ? e.stderr.toString() : e.message));
    }
  }

  // lockerd -P MEMBER: the PIN on stdin.
  setPin(member, pin) {
    execFileSync(LOCKERD, ["-c", this.conf, "-P", member], { input: pin + "\n", stdio: ["pipe", "ignore", "pipe"], timeout: 30000 });
  }

  now() { return new Date(this.ctl(["status"]).station.time); }

  // An ISO time with offset, to the minute, minutes from the station's now.
  at(minutes) {
    const d = new Date(this.now().getTime() + minutes * 60000);
    return d.toISOString().slice(0, 16) + "+00:00";
  }

  // One request on the control socket, without a process start (the benchmark).
  request(cmd, args) {
    return new Promise((resolve, reject) => {
      const c = net.createConnection(this.sock);
      let buf = "";
      c.on("connect", () => c.write(JSON.stringify({ cmd, args }) + "\n"));
      c.on("data", (d) => {
        buf += d;
        const nl = buf.indexOf("\n");
        if (nl >= 0) { c.end(); resolve(JSON.parse(buf.slice(0, nl))); }
      });
      c.on("error", reject);
    });
  }
}

module.exports = { Station, waitFor, freePort, REPO, LOCKERD, LOCKERCTL };
