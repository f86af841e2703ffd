#!/usr/bin/env python3
"""lockerd-console started as root gives root up: once its port is bound and its
certificate and key are read it runs as --user (default lockerd-console) with
that user's groups. Its systemd unit starts it as that user already; this is the
program's own guard for a start by hand. Needs root (skipped otherwise).
"""

import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import unittest

from harness import LOCKERD, REPO, sanitizer_env, wait_until

CONSOLE = os.path.join(os.path.dirname(LOCKERD), "lockerd-console")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_ids(pid):
    """(real uid, effective uid, real gid, effective gid) of a process."""
    ids = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Uid", "Gid"):
                ids[k] = [int(x) for x in v.split()]
    return ids["Uid"][0], ids["Uid"][1], ids["Gid"][0], ids["Gid"][1]


@unittest.skipUnless(os.geteuid() == 0, "lockerd-console gives root up only when it has it")
class ConsoleUserTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="lockerd-console-user-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.key = os.path.join(self.dir, "key.pem")
        self.cert = os.path.join(self.dir, "cert.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", self.key,
                        "-out", self.cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True)
        # Root's own file, as /etc/lockerd/console.accounts would be if a technician
        # got its mode wrong: readable at the start, not after root is given up.
        self.accounts = os.path.join(self.dir, "accounts")
        with open(self.accounts, "w") as f:
            f.write("# no accounts\n")
        os.chmod(self.accounts, 0o600)
        self.log = os.path.join(self.dir, "console.log")

    def start(self, user):
        port = free_port()
        log = open(self.log, "w")
        self.addCleanup(log.close)
        p = subprocess.Popen([CONSOLE, "-l", "127.0.0.1:%d" % port, "-s",
                              os.path.join(self.dir, "no.sock"), "-d",
                              os.path.join(REPO, "ui", "console"), "-a", self.accounts,
                              "--cert", self.cert, "--key", self.key, "--user", user],
                             stdout=subprocess.DEVNULL, stderr=log, env=sanitizer_env())
        self.addCleanup(self.stop, p)
        return p, port

    def stop(self, p):
        if p.poll() is None:
            p.terminate()
            p.wait(timeout=10)

    def log_text(self):
        with open(self.log) as f:
            return f.read()

    def test_runs_as_the_user_it_names(self):
        nobody = pwd.getpwnam("nobody")
        p, port = self.start("nobody")
        wait_until(lambda: "serving the manager console" in self.log_text(), what="serving")
        self.assertEqual(status_ids(p.pid), (nobody.pw_uid,) * 2 + (nobody.pw_gid,) * 2)
        self.assertIn("running as user nobody", self.log_text())
        # Still serves HTTPS: the port was bound and the key read before.
        ctx = ssl.create_default_context(cafile=self.cert)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                self.assertTrue(s.recv(64).startswith(b"HTTP/1.1 "))
        # Root's 0600 accounts file is out of its reach now: a reload keeps the old.
        p.send_signal(1)
        wait_until(lambda: "the old accounts stay" in self.log_text(), what="reload refused")
        self.assertIn("Permission denied", self.log_text())
        self.assertIsNone(p.poll())

    def test_refuses_to_stay_root_for_want_of_the_user(self):
        p, _ = self.start("no-such-user-here")
        self.assertEqual(p.wait(timeout=10), 1)
        self.assertIn("no user 'no-such-user-here' to become", self.log_text())

    def test_root_kept_only_when_named(self):
        p, _ = self.start("root")
        wait_until(lambda: "serving the manager console" in self.log_text(), what="serving")
        self.assertEqual(status_ids(p.pid)[:2], (0, 0))
        self.assertIn("serving as root (--user root)", self.log_text())


if __name__ == "__main__":
    unittest.main()
