"""Unit tests of the harness's pure judgements (no server, no namespace)."""

import sys
import unittest

import harness


class CloseRaceResets(unittest.TestCase):
    T0 = 1_000_000_000_000

    def result(self, *failures):
        return {"t0_ns": self.T0, "failures": [
            {"kind": kind, "phase": "response", "start_ns": start_ms * 1_000_000, "end_ns": end_ms * 1_000_000}
            for kind, start_ms, end_ms in failures]}

    def closes(self, *ms):
        return [self.T0 + m * 1_000_000 for m in ms]

    def test_a_reset_in_flight_at_a_close_is_explained(self):
        self.assertEqual(harness.close_race_resets(self.result(("reset", 100, 101)), self.closes(100)), 1)

    def test_the_log_may_trail_the_close_by_the_slack(self):
        r = self.result(("reset", 100, 101))
        self.assertEqual(harness.close_race_resets(r, self.closes(105)), 1)
        self.assertEqual(harness.close_race_resets(r, self.closes(107)), 0)

    def test_a_reset_away_from_every_close_is_not(self):
        r = self.result(("reset", 100, 101))
        self.assertEqual(harness.close_race_resets(r, self.closes(50, 150)), 0)
        self.assertEqual(harness.close_race_resets(r, []), 0)

    def test_only_resets_count(self):
        r = self.result(("timeout", 100, 101), ("refused", 100, 100), ("reset", 100, 101))
        self.assertEqual(harness.close_race_resets(r, self.closes(100)), 1)

    def test_each_reset_counts_once(self):
        r = self.result(("reset", 100, 110), ("reset", 300, 301))
        self.assertEqual(harness.close_race_resets(r, self.closes(101, 102, 103)), 1)


if __name__ == "__main__":
    sys.exit(unittest.main())
