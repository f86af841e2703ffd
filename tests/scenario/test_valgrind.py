"""lockerd under valgrind: no memory error and no leak from start to a clean
shutdown, with a pickup, a return, a refusal, a follower and a reload in between.

Valgrind cannot run the sanitizer build, so this uses the plain build: LOCKERD_PLAIN,
or build/lockerd next to build-san/. Skipped (with the reason) when valgrind or the
plain build is missing; `make check` provides both.
"""

import os
import shutil
import signal
import subprocess
import unittest

from harness import LOCKERCTL, LOCKERD, StationTestCase, sanitizer_env

PLAIN = os.path.abspath(os.environ.get("LOCKERD_PLAIN") or os.path.join(
    os.path.dirname(os.path.dirname(LOCKERD)), "build", "lockerd"))
UID = "04A1B2C3D4E5F6"


@unittest.skipUnless(shutil.which("valgrind"), "valgrind is not installed")
@unittest.skipUnless(os.access(PLAIN, os.X_OK), "no plain build at %s" % PLAIN)
class ValgrindTest(StationTestCase):
    def test_clean_shutdown_under_valgrind(self):
        st = self.make_station(start=False)
        vglog = os.path.join(st.dir, "valgrind.log")
        st.lockerd = PLAIN
        st.wrapper = ["valgrind", "--quiet", "--error-exitcode=99", "--leak-check=full",
                      "--show-leak-kinds=definite,indirect",
                      "--errors-for-leak-kinds=definite,indirect", "--log-file=" + vglog]
        st.start(timeout=60)
        st.setup_booking(compartment=2, uid=UID)
        follower = subprocess.Popen([LOCKERCTL, "-s", st.sock, "events", "--follow"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env=sanitizer_env())
        self.addCleanup(follower.kill)
        st.pickup(UID, 2)
        st.give_back(UID, 2)
        st.tap("04112233445566")
        st.signal(signal.SIGHUP)
        self.assertEqual(st.status()["station"]["id"], "st-scenario")
        st.signal(signal.SIGTERM)
        rc = st.wait_exit(timeout=60)
        with open(vglog) as f:
            report = f.read()
        self.assertEqual(rc, 0, "valgrind found problems:\n" + report)
        self.assertEqual(report.strip(), "", report)

    def test_clean_shutdown_with_city_sync(self):
        """The same with the city API link: a sync cycle, uploads, a reload (which
        restarts the worker) and shutdown. Valgrind follows lockerd, not the worker
        it starts (the worker runs under the sanitizers in the other tests)."""
        from city import CityServer, city_station_extra, uid_hmac
        city = CityServer().start()
        self.addCleanup(city.cleanup)
        city.set_config()
        st = self.make_station(start=False, extra=city_station_extra(city))
        vglog = os.path.join(st.dir, "valgrind.log")
        st.lockerd = PLAIN
        st.wrapper = ["valgrind", "--quiet", "--error-exitcode=99", "--leak-check=full",
                      "--show-leak-kinds=definite,indirect",
                      "--errors-for-leak-kinds=definite,indirect", "--log-file=" + vglog]
        st.start(timeout=60)
        start = st.now()
        import datetime
        city.reservation("r-1", "club-42", start - datetime.timedelta(minutes=10),
                         start + datetime.timedelta(hours=1), [2])
        city.credential("cred-1", uid_hmac(st, UID), "m-1", ["club-42"])
        self.assertEqual(st.ctl("sync", "now", "--timeout", "60", check=False).rc, 0)
        st.pickup(UID, 2)
        st.signal(signal.SIGHUP)
        self.assertEqual(st.ctl("sync", "now", "--timeout", "60", check=False).rc, 0)
        st.signal(signal.SIGTERM)
        rc = st.wait_exit(timeout=60)
        with open(vglog) as f:
            report = f.read()
        self.assertEqual(rc, 0, "valgrind found problems:\n" + report)
        self.assertEqual(report.strip(), "", report)


if __name__ == "__main__":
    unittest.main()
