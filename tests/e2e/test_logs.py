"""Unit tests of what the e2e tests read in rpserver's log (tools/prefork/rpserver.py,
through the scenarios' adapter, tests/e2e/servers/rpserver.py): no server, a log written
here."""

import os
import tempfile
import time
import unittest

from e2e.servers.rpserver import Rpserver

MS = 1_000_000


def line(wall_s, ms, level, pid, text):
    stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(wall_s))
    return f"{stamp}.{ms:03d} [{level}] {pid}: {text}\n"


class CloseWindows(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.srv = Rpserver("/nonexistent/rpserver", self.dir.name, "sysctl")
        self.wall = int(time.time()) - 10

    def tearDown(self):
        self.dir.cleanup()

    def write(self, *lines):
        with open(self.srv.log, "w") as f:
            f.writelines(lines)

    def monotonic(self, ms):
        return (self.wall * 1000 + ms) * MS - (time.time_ns() - time.monotonic_ns())

    def test_a_close_spans_its_two_lines_of_the_same_process(self):
        self.write(
            line(self.wall, 100, "debug", 7, "reuseport: retire: closing 2 listen socket(s)"),
            line(self.wall, 101, "debug", 8, "reuseport: retire: closing 1 listen socket(s)"),
            line(self.wall, 109, "info", 7, "reuseport: retired: closed 2 listen socket(s); their queues migrate"),
            line(self.wall, 300, "notice", 7, "event=worker_quit gen=1 connections=0"),
            line(self.wall, 350, "info", 8, "reuseport: retired: drained 4 connection(s), closed 1 listen socket(s)"))
        windows = self.srv.close_windows()
        self.assertEqual(len(windows), 2)
        # The log's clock and the monotonic one are read at different instants: within 5 ms.
        for (start, end), (want_start, want_end) in zip(windows, [(100, 111), (101, 352)]):
            self.assertLess(abs(start - self.monotonic(want_start)), 5 * MS)
            self.assertLess(abs(end - self.monotonic(want_end)), 5 * MS)
            self.assertEqual(end - start, (want_end - want_start) * MS)

    def test_a_close_with_no_line_after_it_has_no_window(self):
        self.write(
            line(self.wall, 100, "debug", 7, "reuseport: retire: closing 2 listen socket(s)"),
            line(self.wall, 105, "info", 9, "reuseport: retired: closed 2 listen socket(s); their queues migrate"))
        self.assertEqual(self.srv.close_windows(), [])

    def test_the_config_asks_for_the_level_that_logs_the_first_line(self):
        self.srv.configure(2, ["127.0.0.1:8080"])
        with open(self.srv.conf) as f:
            self.assertIn(f"error_log {self.srv.log} debug;", f.read())


class StallUpgradeOrder(unittest.TestCase):
    """scenarios/stall.py verdict_order(): whether stall_upgrade's stopped worker was judged
    after its running sibling began to retire, in nginx's log format and rpserver's."""

    NGINX = [
        "2026/12/02 20:09:22 [debug] 501#0: reuseport: retire: closing 1 listen socket(s)\n",
        "2026/12/02 20:09:22 [warn] 500#0: reuseport: 127.0.0.1:8080: worker 502 (slot 1) is not accepting: "
        "3 connection(s) waited 300 ms without a heartbeat; new connections go to its siblings\n",
    ]

    def test_the_verdict_after_the_retire_is_the_scenario_meant(self):
        from e2e.scenarios.stall import verdict_order
        self.assertFalse(verdict_order(self.NGINX, 501, 502).startswith("NOT EXERCISED"))
        rp = [line(0, 1, "debug", 601, "reuseport: retire: closing 1 listen socket(s)"),
              line(0, 9, "warn", 600, "reuseport: 127.0.0.1:8080: worker 602 (slot 1) is not accepting: x")]
        self.assertFalse(verdict_order(rp, 601, 602).startswith("NOT EXERCISED"))
        # nginx's error log at info has the retire's last line only.
        info = [self.NGINX[0].replace("[debug]", "[info]").replace("retire: closing", "retired: closed"), self.NGINX[1]]
        self.assertFalse(verdict_order(info, 501, 502).startswith("NOT EXERCISED"))

    def test_a_verdict_first_or_no_retire_is_said_not_exercised(self):
        from e2e.scenarios.stall import verdict_order
        self.assertTrue(verdict_order(self.NGINX[::-1], 501, 502).startswith("NOT EXERCISED"))
        self.assertTrue(verdict_order(self.NGINX[1:], 501, 502).startswith("NOT EXERCISED"))
        # Another process's retire does not count (5010 is not 501).
        other = [self.NGINX[0].replace("501#0", "5010#0"), self.NGINX[1]]
        self.assertTrue(verdict_order(other, 501, 502).startswith("NOT EXERCISED"))

    def test_without_a_verdict_there_is_nothing_to_say(self):
        from e2e.scenarios.stall import verdict_order
        self.assertIsNone(verdict_order(self.NGINX[:1], 501, 502))


if __name__ == "__main__":
    unittest.main()
