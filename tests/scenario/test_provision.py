"""`lockerctl provision` against the reference city server (tests/cityapi/server.py):
key, CSR, enrollment with a one-time token, site key, config, `lockerd -n`, the
mutual-TLS check, and that a provisioned station really syncs (issue 5, point 1).

Every run is compared with what is on disk afterwards: a second run changes nothing,
--dry-run writes nothing, a failed enrollment writes no certificate, the key is never
overwritten.
"""

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import unittest

from harness import LOCKERCTL, LOCKERD, SANITIZER_MARKERS, StationTestCase, sanitizer_env
from city import CityServer

STATUSES = {"ok", "changed", "skip", "would", "FAIL"}
STEPS = ["state-dir", "key", "csr", "enroll", "site-key", "config", "check", "verify", "owner"]

# The [api] section of a template; the rest comes from harness.Station.
API_TEMPLATE = "\n".join([
    "[api]",
    "url = @API_URL@",
    "ca = @STATE_DIR@/tls/ca.pem",
    "cert = @STATE_DIR@/tls/client.pem",
    "key = @STATE_DIR@/tls/client.key",
])


def openssl(*args):
    return subprocess.run(["openssl"] + list(args), capture_output=True, text=True)


def snapshot(*roots):
    """path -> (mode, mtime_ns, inode, content) of every file and directory below roots."""
    out = {}
    for root in roots:
        if os.path.isfile(root):
            walk = [(os.path.dirname(root), [], [os.path.basename(root)])]
        else:
            walk = os.walk(root)
        for d, dirs, files in walk:
            for name in dirs + files:
                p = os.path.join(d, name)
                st = os.lstat(p)
                content = None
                if stat.S_ISREG(st.st_mode):
                    with open(p, "rb") as f:
                        content = f.read()
                out[p] = (st.st_mode, st.st_mtime_ns, st.st_ino, content)
    return out


class ProvisionTestCase(StationTestCase):
    @classmethod
    def setUpClass(cls):
        cls.city = CityServer().start()
        cls.city.set_config(name="Sporthalle Provisioning")

    @classmethod
    def tearDownClass(cls):
        cls.city.cleanup()

    def token(self):
        return self.city.admin("POST", "/admin/enroll-tokens", {})["token"]

    def token_used(self, token):
        for t in self.city.admin("GET", "/admin/enroll-tokens")["tokens"]:
            if t["token"] == token:
                return t["used"]
        raise AssertionError("no token %s" % token)

    def station(self, template=True, **kw):
        """A Station not started, and its config moved to a template when asked: the
        config file does not exist then, the state directory neither."""
        if template:
            kw.setdefault("station", {"id": "@STATION_ID@", "name": "@NAME@",
                                      "state_dir": "@STATE_DIR@"})
            kw.setdefault("extra", API_TEMPLATE)
        st = self.make_station(start=False, **kw)
        st.template = os.path.join(st.dir, "template.conf")
        if template:
            os.rename(st.conf, st.template)
        return st

    def provision(self, st, *extra, token=None, ca=None, json_out=True, template=True,
                  state_dir=None, stdin_text=None):
        argv = [LOCKERCTL, "provision", "--station", self.city.station,
                "--url", self.city.base_url, "--token", token or self.token(),
                "--ca", ca or os.path.join(self.city.certs, "server-ca.pem"),
                "--config", st.conf, "--lockerd", LOCKERD]
        if state_dir is not False:
            argv += ["--state-dir", state_dir or st.state_dir]
        if template:
            argv += ["--template", st.template]
        if json_out:
            argv.append("--json")
        argv += list(extra)
        if stdin_text is None:
            p = subprocess.run(argv, capture_output=True, text=True, env=sanitizer_env(),
                               stdin=subprocess.DEVNULL, timeout=120)
        else:
            p = subprocess.run(argv, capture_output=True, text=True, env=sanitizer_env(),
                               input=stdin_text, timeout=120)
        for marker in SANITIZER_MARKERS:
            self.assertNotIn(marker, p.stderr, "sanitizer finding in lockerctl provision")
        p.data = None
        if json_out and p.stdout.strip():
            p.data = json.loads(p.stdout)
        return p

    def statuses(self, p):
        """step -> status of a --json run, after checking the document's shape."""
        self.assertIsNotNone(p.data, "no JSON: rc %d\n%s\n%s" % (p.returncode, p.stdout,
                                                                 p.stderr))
        self.assertEqual(p.data["station"], self.city.station)
        got = {}
        for s in p.data["steps"]:
            self.assertEqual(set(s), {"step", "status", "detail"})
            self.assertIn(s["status"], STATUSES)
            got[s["step"]] = s["status"]
        self.assertEqual(list(got), [s["step"] for s in p.data["steps"]], "a step twice")
        self.assertEqual(p.data["ok"], "FAIL" not in got.values())
        return got

    def detail(self, p, step):
        for s in p.data["steps"]:
            if s["step"] == step:
                return s["detail"]
        raise AssertionError("no step %s in %s" % (step, p.stdout))

    def assert_provisioned(self, p):
        got = self.statuses(p)
        self.assertEqual(p.returncode, 0, "provision failed:\n%s\n%s" % (p.stdout, p.stderr))
        self.assertEqual(list(got), STEPS)
        self.assertTrue(set(got.values()) <= {"ok", "changed", "skip"}, got)
        return got

    def tls(self, st, name):
        return os.path.join(st.state_dir, "tls", name)


class TestProvision(ProvisionTestCase):
    def test_fresh_station_enrolls_configures_and_syncs(self):
        st = self.station()
        token = self.token()
        p = self.provision(st, "--name", "Halle Nord", token=token)
        got = self.assert_provisioned(p)
        self.assertEqual(got["enroll"], "changed")
        self.assertEqual(got["config"], "changed")
        self.assertTrue(self.token_used(token))
        self.assertIn("Sporthalle Provisioning", self.detail(p, "verify"))

        # The key: EC P-256, 0600, in a 0750 directory.
        key = self.tls(st, "client.key")
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(st.state_dir).st_mode), 0o750)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(key)).st_mode), 0o750)
        text = openssl("pkey", "-in", key, "-noout", "-text").stdout
        self.assertIn("prime256v1", text)
        # The certificate: CN = station id, for that key, issued by the client CA.
        cert = self.tls(st, "client.pem")
        subject = openssl("x509", "-in", cert, "-noout", "-subject", "-nameopt", "RFC2253")
        self.assertEqual(subject.stdout.strip(), "subject=CN=%s" % self.city.station)
        v = openssl("verify", "-CAfile", os.path.join(self.city.certs, "client-ca.pem"),
                    "-purpose", "sslclient", cert)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        pub_key = openssl("pkey", "-in", key, "-pubout").stdout
        pub_cert = openssl("x509", "-in", cert, "-noout", "-pubkey").stdout
        self.assertEqual(pub_key, pub_cert)
        self.assertEqual(stat.S_IMODE(os.stat(cert).st_mode), 0o644)
        with open(os.path.join(self.city.certs, "server-ca.pem"), "rb") as a, \
                open(self.tls(st, "ca.pem"), "rb") as b:
            self.assertEqual(a.read(), b.read())
        site_key = os.path.join(st.state_dir, "site.key")
        self.assertEqual(os.path.getsize(site_key), 32)
        self.assertEqual(stat.S_IMODE(os.stat(site_key).st_mode), 0o600)
        # The config: filled in, 0640, and lockerd accepts it.
        self.assertEqual(stat.S_IMODE(os.stat(st.conf).st_mode), 0o640)
        with open(st.conf) as f:
            conf = f.read()
        self.assertNotIn("@", conf)
        self.assertIn("id = %s\n" % self.city.station, conf)
        self.assertIn("name = Halle Nord\n", conf)
        self.assertIn("url = %s\n" % self.city.base_url, conf)
        self.assertFalse(os.path.exists(st.conf + ".bak"))
        n = subprocess.run([LOCKERD, "-n", "-c", st.conf], capture_output=True, text=True,
                           env=sanitizer_env())
        self.assertEqual(n.returncode, 0, n.stderr)

        # A real lockerd with that config syncs with the city.
        st.start()
        r = st.ctl("sync", "now", "--timeout", "30", check=False)
        self.assertEqual(r.rc, 0, "sync now failed: %s\n%s" % (r, st.stderr_tail()))
        self.assertTrue(r["cycle"]["ok"])
        self.assertEqual(st.j("status")["station"]["name"], "Halle Nord")
        st.stop()

        # A second run with the same arguments changes nothing (the token is used up;
        # it is not needed again).
        before = snapshot(st.state_dir, st.conf)
        p = self.provision(st, "--name", "Halle Nord", token=token)
        got = self.assert_provisioned(p)
        self.assertEqual(set(got.values()) - {"ok", "skip"}, set(), got)
        self.assertEqual(got["enroll"], "skip")
        self.assertEqual(snapshot(st.state_dir, st.conf), before)
        self.assertFalse(os.path.exists(st.conf + ".bak"))
        # The table for people: one "status  step: detail" line per step.
        p = self.provision(st, "--name", "Halle Nord", token=token, json_out=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        lines = p.stdout.splitlines()
        self.assertEqual([re.match(r"^(ok|skip) +([a-z-]+): \S", l).group(2) for l in lines],
                         STEPS, p.stdout)
        self.assertEqual(snapshot(st.state_dir, st.conf), before)

    def test_dry_run_writes_nothing(self):
        st = self.station()
        token = self.token()
        before = snapshot(st.dir)
        p = self.provision(st, "--dry-run", token=token)
        got = self.statuses(p)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertTrue(p.data["dryRun"])
        self.assertEqual(list(got), STEPS)
        self.assertTrue(set(got.values()) <= {"would", "skip", "ok"}, got)
        for s in ("state-dir", "key", "enroll", "site-key", "config"):
            self.assertEqual(got[s], "would", s)
        self.assertEqual(snapshot(st.dir), before)
        self.assertFalse(os.path.exists(st.state_dir))
        self.assertFalse(os.path.exists(st.conf))
        self.assertFalse(self.token_used(token))
        # And then for real, with the same token.
        self.assert_provisioned(self.provision(st, token=token))
        # A dry run on a provisioned station has nothing to do.
        before = snapshot(st.state_dir, st.conf)
        p = self.provision(st, "--dry-run", token=token)
        got = self.statuses(p)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertTrue(set(got.values()) <= {"ok", "skip"}, got)
        self.assertEqual(snapshot(st.state_dir, st.conf), before)

    def test_used_token_fails_clearly(self):
        token = self.token()
        self.assert_provisioned(self.provision(self.station(), token=token))
        st = self.station()
        p = self.provision(st, token=token)
        got = self.statuses(p)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertEqual(got["enroll"], "FAIL")
        detail = self.detail(p, "enroll")
        self.assertIn("401", detail)
        self.assertIn("an unused enrollment token is required", detail)
        self.assertIn("new one", detail)
        # It stops there: no certificate, no config.
        self.assertEqual(list(got)[-1], "enroll")
        self.assertFalse(os.path.exists(self.tls(st, "client.pem")))
        self.assertFalse(os.path.exists(self.tls(st, "ca.pem")))
        self.assertFalse(os.path.exists(st.conf))
        # The same for people: a FAIL line, exit 1.
        p = self.provision(st, token=token, json_out=False)
        self.assertEqual(p.returncode, 1)
        self.assertRegex(p.stdout, r"(?m)^FAIL +enroll: .*401 Unauthorized: an unused "
                                   r"enrollment token is required")

    def test_token_from_stdin(self):
        """`--token -`: the token never appears in the process list."""
        st = self.station()
        p = self.provision(st, token="-", stdin_text=self.token() + "\n")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(self.statuses(p)["enroll"], "changed")

    def test_wrong_ca_fails_tls_and_writes_no_certificate(self):
        st = self.station()
        token = self.token()
        p = self.provision(st, token=token, ca=os.path.join(self.city.certs, "wrong-ca.pem"))
        got = self.statuses(p)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertEqual(got["enroll"], "FAIL")
        self.assertIn("TLS", self.detail(p, "enroll"))
        self.assertFalse(os.path.exists(self.tls(st, "client.pem")))
        self.assertFalse(os.path.exists(self.tls(st, "ca.pem")))
        self.assertFalse(os.path.exists(st.conf))
        self.assertFalse(self.token_used(token))
        # The key made on the way stays and is used with the right CA and the same token.
        with open(self.tls(st, "client.key"), "rb") as f:
            key = f.read()
        got = self.assert_provisioned(self.provision(st, token=token))
        self.assertEqual(got["key"], "ok")
        with open(self.tls(st, "client.key"), "rb") as f:
            self.assertEqual(f.read(), key)

    def test_key_is_never_overwritten(self):
        st = self.station()
        self.assert_provisioned(self.provision(st))
        key_path = self.tls(st, "client.key")
        key_before = snapshot(key_path)
        # Without a certificate the station enrolls again, with the key it has.
        os.unlink(self.tls(st, "client.pem"))
        got = self.assert_provisioned(self.provision(st))
        self.assertEqual((got["key"], got["enroll"]), ("ok", "changed"))
        self.assertEqual(snapshot(key_path), key_before)
        pub_key = openssl("pkey", "-in", key_path, "-pubout").stdout
        pub_cert = openssl("x509", "-in", self.tls(st, "client.pem"), "-noout",
                           "-pubkey").stdout
        self.assertEqual(pub_key, pub_cert)

        # A key others can read: FAIL with advice, the file untouched.
        os.chmod(key_path, 0o644)
        before = snapshot(st.state_dir)
        p = self.provision(st)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(self.statuses(p)["key"], "FAIL")
        self.assertIn("chmod 600", self.detail(p, "key"))
        self.assertEqual(snapshot(st.state_dir), before)

        # A key of the wrong type: FAIL, never replaced.
        os.unlink(key_path)
        r = openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", key_path)
        self.assertEqual(r.returncode, 0, r.stderr)
        os.chmod(key_path, 0o600)
        before = snapshot(st.state_dir)
        token = self.token()
        p = self.provision(st, token=token)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(self.statuses(p)["key"], "FAIL")
        self.assertIn("not EC P-256", self.detail(p, "key"))
        self.assertEqual(snapshot(st.state_dir), before)
        self.assertFalse(self.token_used(token))

    def test_existing_config_is_edited_in_place(self):
        # A station configured by hand, without [api]: provisioning adds it and keeps
        # every other line.
        st = self.station(template=False)
        with open(st.conf) as f:
            original = f.read()
        original = original.replace("[reader]", "# the reader; comment kept\n[reader]")
        with open(st.conf, "w") as f:
            f.write(original)
        os.chmod(st.conf, 0o640)
        p = self.provision(st, template=False, state_dir=False)
        got = self.assert_provisioned(p)
        self.assertEqual(got["config"], "changed")
        with open(st.conf) as f:
            conf = f.read()
        with open(st.conf + ".bak") as f:
            self.assertEqual(f.read(), original)
        for line in original.splitlines():
            self.assertIn(line, conf.splitlines())
        api = conf[conf.index("[api]"):]
        for k, v in (("url", self.city.base_url), ("ca", self.tls(st, "ca.pem")),
                     ("cert", self.tls(st, "client.pem")), ("key", self.tls(st, "client.key"))):
            self.assertIn("\n%s = %s\n" % (k, v), api)
        # The state directory came from the config; a second run changes nothing.
        before = snapshot(st.dir)
        p = self.provision(st, template=False, state_dir=False)
        got = self.assert_provisioned(p)
        self.assertEqual(got["config"], "ok")
        self.assertEqual(snapshot(st.dir), before)

    def test_no_config_and_no_template_fails(self):
        st = self.station()
        p = self.provision(st, template=False)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(self.statuses(p)["config"], "FAIL")
        self.assertIn("pass --template", self.detail(p, "config"))
        self.assertFalse(os.path.exists(st.conf))

    def test_usage_errors(self):
        ca = os.path.join(self.city.certs, "server-ca.pem")
        d = tempfile.mkdtemp(prefix="lockerd-provision-usage-")
        self.addCleanup(shutil.rmtree, d, True)
        full = ["--station", "st-1", "--url", "https://127.0.0.1:1/v1", "--token", "t",
                "--ca", ca, "--config", os.path.join(d, "c.conf"), "--state-dir",
                os.path.join(d, "state")]
        cases = [
            (full[2:], "provision needs --station"),
            (full[:4] + full[6:], "provision needs --token"),
            (full + ["--frobnicate"], "unknown option --frobnicate"),
            (full + ["extra"], "unexpected argument 'extra'"),
            (full + ["--name"], "missing its value"),
            (full + ["--url", "http://127.0.0.1:1/v1"], "https://"),
            (full + ["--ca", os.path.join(d, "missing.pem")], "cannot read --ca"),
        ]
        for args, msg in cases:
            with self.subTest(args=args):
                p = subprocess.run([LOCKERCTL, "provision"] + args, capture_output=True,
                                   text=True, env=sanitizer_env(), stdin=subprocess.DEVNULL)
                self.assertEqual(p.returncode, 2, p.stderr)
                self.assertEqual(p.stdout, "")
                self.assertTrue(p.stderr.startswith("lockerctl: "), p.stderr)
                self.assertIn(msg, p.stderr)
                self.assertTrue(p.stderr.endswith("lockerctl: see 'lockerctl --help'\n"))
        self.assertEqual(os.listdir(d), [])


if __name__ == "__main__":
    unittest.main()
