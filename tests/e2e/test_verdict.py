"""Unit tests of the verdicts (tests/e2e/verdict.py): no server, no namespace."""

import unittest

from e2e import verdict
from e2e.verdict import Kill

MS = 1_000_000
T0 = 1_000_000_000_000


def result(*failures, ok=1000, unrecorded=()):
    """A load client result whose failures are (kind, start ms, end ms) since T0; plus
    `unrecorded` failures (kinds) beyond the client's records."""
    counts = {"refused": 0, "reset": 0, "timeout": 0, "other": 0}
    for kind, *_ in failures:
        counts[kind] += 1
    for kind in unrecorded:
        counts[kind] += 1
    return {"t0_ns": T0, "ok": ok, "requests": ok + sum(counts.values()), **counts,
            "failures": [{"kind": kind, "phase": "response", "start_ns": start * MS, "end_ns": end * MS}
                         for kind, start, end in failures]}


def at(ms):
    return T0 + ms * MS


def kill(sent_ms, dead_ms, in_flight=0, pid=42):
    return Kill(pid=pid, sent_ns=at(sent_ms), dead_ns=at(dead_ms), in_flight=in_flight)


class CloseWindows(unittest.TestCase):
    def window(self, start_ms, end_ms):
        return [(at(start_ms), at(end_ms))]

    def test_a_reset_in_flight_during_a_close_is_excused(self):
        v = verdict.losses(result(("reset", 100, 101)), close_windows=self.window(100, 102))
        self.assertEqual((v.close_race, v.unexcused), (1, 0))

    def test_however_late_the_client_notices(self):
        # Its event loop may learn of the reset long after the close.
        v = verdict.losses(result(("reset", 99, 160)), close_windows=self.window(100, 102))
        self.assertEqual((v.close_race, v.unexcused), (1, 0))

    def test_a_reset_away_from_every_close_is_not(self):
        r = result(("reset", 100, 101))
        self.assertFalse(verdict.losses(r, close_windows=[(at(50), at(99)), (at(102), at(150))]).ok)
        self.assertFalse(verdict.losses(r).ok)

    def test_only_resets_are_close_races(self):
        r = result(("timeout", 100, 101), ("refused", 100, 100), ("reset", 100, 101))
        v = verdict.losses(r, close_windows=self.window(100, 101))
        self.assertEqual((v.close_race, v.unexcused), (1, 2))

    def test_each_reset_counts_once(self):
        r = result(("reset", 100, 110), ("reset", 300, 301))
        v = verdict.losses(r, close_windows=[(at(101), at(102)), (at(102), at(103)), (at(103), at(104))])
        self.assertEqual((v.close_race, v.unexcused), (1, 1))


class Placed(unittest.TestCase):
    def test_a_failure_is_placed_against_the_nearest_close_and_kill(self):
        r = result(("reset", 100, 112), ("timeout", 400, 900))
        lines = verdict.placed(r, close_windows=[(at(90), at(95)), (at(120), at(121)), (at(700), at(702))],
                               kills=[kill(600, 610)])
        self.assertEqual(len(lines), 2)
        self.assertIn("reset in phase response, in flight 100.0 to 112.0 ms", lines[0])
        self.assertIn("nearest close window 120.0 to 121.0", lines[0])
        self.assertIn("nearest close window 700.0 to 702.0", lines[1])
        self.assertIn("nearest kill sent at 600.0, dead at 610.0", lines[1])

    def test_nothing_to_place_against_says_only_the_failure(self):
        self.assertEqual(verdict.placed(result(("reset", 1, 2))), ["reset in phase response, in flight 1.0 to 2.0 ms"])


class Losses(unittest.TestCase):
    def test_no_failure_passes(self):
        v = verdict.losses(result())
        self.assertTrue(v.ok)
        self.assertEqual(v.failed, 0)

    def test_any_failure_without_an_excuse_fails(self):
        for kind in ("refused", "reset", "timeout", "other"):
            v = verdict.losses(result((kind, 100, 101)))
            self.assertFalse(v.ok, kind)
            self.assertEqual(v.unexcused, 1)

    def test_a_reset_in_flight_at_a_kill_is_excused(self):
        v = verdict.losses(result(("reset", 100, 102)), kills=[kill(101, 101)])
        self.assertTrue(v.ok)
        self.assertEqual(v.kill_race, 1)

    def test_a_reset_far_from_every_kill_fails(self):
        r = result(("reset", 500, 501))
        self.assertFalse(verdict.losses(r, kills=[kill(100, 101), kill(900, 901)]).ok)
        # ... even when the killed worker had accepted connections: those failed at its kill
        self.assertFalse(verdict.losses(r, kills=[kill(100, 101, in_flight=3)]).ok)

    def test_the_window_is_the_kill_to_the_death_and_the_notice_slack(self):
        k = kill(100, 104)
        self.assertTrue(verdict.losses(result(("reset", 104, 110)), kills=[k]).ok)  # started before death
        self.assertFalse(verdict.losses(result(("reset", 105, 110)), kills=[k]).ok)  # started after it
        self.assertFalse(verdict.losses(result(("reset", 90, 99)), kills=[k]).ok)  # failed before the signal
        slack_ms = verdict.KILL_NOTICE_SLACK_NS // MS
        self.assertTrue(verdict.losses(result(("reset", 90, 104 + slack_ms)), kills=[k]).ok)
        self.assertFalse(verdict.losses(result(("reset", 90, 105 + slack_ms)), kills=[k]).ok)

    def test_a_timeout_is_never_excused_by_a_kill_race(self):
        v = verdict.losses(result(("timeout", 100, 102)), kills=[kill(101, 101)])
        self.assertFalse(v.ok)
        self.assertEqual(v.kill_race, 0)

    def test_other_failures_at_a_kill_count_against_what_it_had_accepted(self):
        r = result(("other", 100, 102), ("timeout", 100, 102), ("reset", 100, 102))
        v = verdict.losses(r, kills=[kill(101, 101, in_flight=2)])
        self.assertTrue(v.ok)
        self.assertEqual((v.kill_race, v.kill_accepted), (1, 2))
        v = verdict.losses(r, kills=[kill(101, 101, in_flight=1)])
        self.assertFalse(v.ok)
        self.assertEqual(v.unexcused, 1)

    def test_what_a_killed_worker_accepted_excuses_nothing_away_from_its_kill(self):
        v = verdict.losses(result(("other", 500, 501)), kills=[kill(100, 101, in_flight=5)])
        self.assertFalse(v.ok)

    def test_each_reset_counts_once(self):
        r = result(("reset", 100, 110), ("reset", 300, 301))
        v = verdict.losses(r, kills=[kill(101, 101), kill(102, 103), kill(105, 106)])
        self.assertEqual(v.kill_race, 1)
        self.assertEqual(v.unexcused, 1)
        # a reset at both a close and a kill is excused once
        v = verdict.losses(result(("reset", 100, 102)), close_windows=[(at(101), at(101))], kills=[kill(101, 101)])
        self.assertEqual((v.close_race, v.kill_race, v.unexcused), (1, 0, 0))

    def test_resets_within_an_unlogged_close_window_are_close_races(self):
        # The window after a signal to a master whose workers close without a log line.
        window = [(at(100), at(100) + verdict.SIGNAL_CLOSE_NS)]
        r = result(("reset", 100, 101), ("reset", 150, 199), ("timeout", 120, 121))
        v = verdict.losses(r, close_windows=window)
        self.assertEqual((v.close_race, v.unexcused), (2, 1))
        # Before the signal, or after the window, a reset is not excused.
        r = result(("reset", 90, 99), ("reset", 201, 202))
        v = verdict.losses(r, close_windows=window)
        self.assertEqual((v.close_race, v.unexcused), (0, 2))

    def test_counts_excuse_any_failure_up_to_what_dead_and_stopped_workers_held(self):
        r = result(("timeout", 100, 3100), ("reset", 500, 501), ("other", 900, 901))
        self.assertTrue(verdict.losses(r, lost=2, held=1).ok)
        v = verdict.losses(r, lost=1, held=1)
        self.assertEqual((v.counted, v.unexcused), (2, 1))

    def test_failures_without_a_record_are_excused_by_counts_only(self):
        r = result(("reset", 100, 102), unrecorded=("reset",))
        self.assertFalse(verdict.losses(r, kills=[kill(101, 101)]).ok)
        self.assertTrue(verdict.losses(r, kills=[kill(101, 101)], lost=1).ok)

    def test_explain_names_each_excuse(self):
        v = verdict.losses(result(("reset", 100, 102), ("other", 500, 501)), kills=[kill(101, 101)])
        self.assertIn("1 reset(s) in flight at a kill", v.explain())
        self.assertIn("1 unexcused", v.explain())


class TimelineRate(unittest.TestCase):
    def timeline(self, *buckets, width_ms=100):
        return {"t0_ns": T0, "timeline_ms": width_ms, "timeline": list(buckets)}

    def test_whole_buckets(self):
        r = self.timeline(10, 20, 30)
        self.assertAlmostEqual(verdict.timeline_rate(r, at(0), at(300)), 200.0)
        self.assertAlmostEqual(verdict.timeline_rate(r, at(100), at(200)), 200.0)

    def test_a_bucket_that_straddles_an_end_counts_for_the_part_inside(self):
        r = self.timeline(10, 20)
        # half of the first (5) and half of the second (10) in 100 ms
        self.assertAlmostEqual(verdict.timeline_rate(r, at(50), at(150)), 150.0)

    def test_an_empty_window_is_an_error(self):
        with self.assertRaises(ValueError):
            verdict.timeline_rate(self.timeline(1), at(100), at(100))


class Stall(unittest.TestCase):
    def load(self, per_bucket_before, per_bucket_during, timeouts=0, other=0):
        # 100 ms buckets: 2 s steady, 4 s stall, 1.5 s after, then the drain
        buckets = [per_bucket_before] * 20 + [per_bucket_during] * 40 + [per_bucket_before] * 15 + [0] * 5
        return {"t0_ns": T0, "timeline_ms": 100, "timeline": buckets, "timeout": timeouts, "reset": other,
                "refused": 0, "other": 0}

    def stalled(self, accepted=5):
        return {"stop_ns": at(2000), "cont_ns": at(6000), "accepted_at_stop": accepted, "stalled_pid": 7}

    def test_figures(self):
        f = verdict.stall_figures(self.load(100, 95, timeouts=3, other=1), self.stalled())
        self.assertEqual((f["steady_rate"], f["stall_rate"], f["stall_ratio"]), (1000.0, 950.0, 0.95))
        self.assertEqual((f["stall_s"], f["timeouts"], f["other_failures"], f["accepted_at_stop"]), (4.0, 3, 1, 5))

    def test_the_steady_rate_leaves_out_the_start(self):
        load = self.load(100, 100)
        load["timeline"][:5] = [0] * 5  # the first STALL_SKIP_S
        self.assertEqual(verdict.stall_figures(load, self.stalled())["steady_rate"], 1000.0)

    def test_failures_within_what_the_stopped_worker_had_accepted_pass(self):
        f = verdict.stall_figures(self.load(100, 95, timeouts=4, other=1), self.stalled(accepted=5))
        self.assertTrue(all(ok for ok, _ in verdict.stall_checks(f)))
        f = verdict.stall_figures(self.load(100, 95, timeouts=5, other=1), self.stalled(accepted=5))
        self.assertEqual([ok for ok, _ in verdict.stall_checks(f)], [False, True])

    def test_the_rate_during_the_stall_must_reach_the_ratio(self):
        f = verdict.stall_figures(self.load(100, 89), self.stalled())
        self.assertEqual([ok for ok, _ in verdict.stall_checks(f)], [True, False])
        f = verdict.stall_figures(self.load(100, 90), self.stalled())
        self.assertEqual([ok for ok, _ in verdict.stall_checks(f)], [True, True])
        self.assertEqual(len(verdict.stall_checks(f, rate=False)), 1)

    def test_a_missed_rate_is_measured_again_up_to_the_attempts(self):
        self.assertTrue(verdict.needs_another_attempt([0.5]))
        self.assertFalse(verdict.needs_another_attempt([0.95]))
        self.assertFalse(verdict.needs_another_attempt([0.5] * verdict.STALL_RATE_ATTEMPTS))
        self.assertTrue(verdict.rate_check([0.5, 0.92], 7)[0])
        self.assertFalse(verdict.rate_check([0.5, 0.8, 0.89], 7)[0])


class Fairness(unittest.TestCase):
    def test_fair_shares(self):
        shares = verdict.fair_shares({"workers": {"1": 50, "2": 150}}, [1, 2])
        self.assertEqual(shares, {1: 0.5, 2: 1.5})

    def test_a_worker_that_served_nothing_has_share_0(self):
        self.assertEqual(verdict.fair_shares({"workers": {"1": 100}}, [1, 2]), {1: 2.0, 2: 0.0})

    def test_only_the_given_workers_count(self):
        # an old worker that served part of the load is not one of those that share it now
        self.assertEqual(verdict.fair_shares({"workers": {"1": 100, "2": 100, "9": 800}}, [1, 2]), {1: 1.0, 2: 1.0})

    def test_nothing_served_is_share_0_everywhere(self):
        self.assertEqual(verdict.fair_shares({"workers": {}}, [1, 2]), {1: 0.0, 2: 0.0})

    def test_every_worker_needs_its_minimum_share(self):
        f = {"timeouts": 0, "other_failures": 0, "accepted_at_stop": 0, "stalled_pid": 7}
        low = verdict.STALL_MIN_SHARE - 0.01
        self.assertFalse(verdict.stall_checks(f, rate=False, shares={1: 2 - low, 2: low})[1][0])
        self.assertTrue(verdict.stall_checks(f, rate=False, shares={1: 1.4, 2: verdict.STALL_MIN_SHARE})[1][0])


if __name__ == "__main__":
    unittest.main()
