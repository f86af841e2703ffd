"""Drive pn532_emu (an emulated PN532 on a pty) from Python scenario tests.

    with Pn532Emu() as emu:                 # starts it, waits for "ready"
        # run lockerd with reader connstring emu.connstring
        emu.wait("poll ")                   # the daemon is polling
        emu.cmd("card desfire 04A1B2C3D4E5F6 app=F51CD0 key=aes:... key=aes:... "
                "file=1:enc:1000:...")
        emu.wait("auth ok 1")
        emu.cmd("remove")

Events and commands are documented at the top of tests/pn532/pn532_emu.c. Every event
line is kept in order: wait() looks at lines after the previous match and moves past
the line it returns; seen() searches everything; skip() forgets the past. Waits block
on the emulator's output with a timeout; nothing sleeps.

Environment: PN532_EMU, the binary (default build/pn532/pn532_emu). Standard library
only.
"""

import os
import subprocess
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_BINARY = os.path.join(REPO, "build", "pn532", "pn532_emu")
TIMEOUT = 5.0


class EmuError(Exception):
    pass


class Pn532Emu:
    def __init__(self, binary=None, link=None, verbose=False):
        self.binary = binary or os.environ.get("PN532_EMU", DEFAULT_BINARY)
        self._tmp = None
        if link is None:
            self._tmp = tempfile.mkdtemp(prefix="pn532emu-")
            link = os.path.join(self._tmp, "pn532")
        self.link = link
        self.connstring = "pn532_uart:" + link
        self.lines = []
        self.cursor = 0
        self._cond = threading.Condition()
        self._eof = False
        args = [self.binary, "--link", link] + (["-v"] if verbose else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.pts = self.wait("ready ").split()[1]

    def _read(self):
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait(self, prefix, timeout=TIMEOUT):
        """Returns the next event line starting with prefix; EmuError on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self.cursor < len(self.lines):
                    line = self.lines[self.cursor]
                    self.cursor += 1
                    if line.startswith(prefix):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    raise EmuError("no %r from pn532_emu within %.1f s (last: %r)"
                                   % (prefix, timeout, self.lines[-5:]))
                self._cond.wait(left)

    def cmd(self, command, timeout=TIMEOUT):
        """Sends one control command; returns its "ok" line, raises EmuError on "error"."""
        with self._cond:
            start = len(self.lines)
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if line.startswith("ok ") or line.startswith("error "):
                        if line.startswith("error "):
                            raise EmuError("%s: %s" % (command, line))
                        return line
                start = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    raise EmuError("no answer to %r within %.1f s" % (command, timeout))
                self._cond.wait(left)

    def seen(self, prefix):
        with self._cond:
            return any(line.startswith(prefix) for line in self.lines)

    def saw(self, prefix, timeout=TIMEOUT):
        """True once any event line, past or coming, starts with prefix; False after
        timeout. For events that happened before something the test already observed
        elsewhere: the thread reading the emulator's output may be a moment behind."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if any(line.startswith(prefix) for line in self.lines):
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    return False
                self._cond.wait(left)

    def skip(self):
        with self._cond:
            self.cursor = len(self.lines)

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except (BrokenPipeError, ValueError):
                pass
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=TIMEOUT)
        self.proc.stdout.close()
        if self._tmp:
            try:
                os.unlink(self.link)
            except FileNotFoundError:
                pass
            os.rmdir(self._tmp)
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":
    # Self-test: nfc-list (libnfc-bin) sees the emulated DESFire card.
    with Pn532Emu() as emu:
        emu.cmd("card desfire 04A1B2C3D4E5F6")
        env = dict(os.environ, LIBNFC_DEVICE=emu.connstring, LIBNFC_AUTO_SCAN="false")
        out = subprocess.run(["nfc-list", "-t", "1"], env=env, capture_output=True,
                             text=True, timeout=60).stdout
        emu.wait("selected 04A1B2C3D4E5F6 desfire")
        assert "04  a1  b2  c3  d4  e5  f6" in out, out
        print("pn532emu.py: PASS")
