"""Unit tests of tests/e2e/phases.py: no server."""

import unittest

from e2e.phases import slow_by_phase


def result(ok, slow, step=1):
    return {"timeline_ms": step, "timeline": ok, "timeline_slow": slow}


class SlowByPhase(unittest.TestCase):
    def test_buckets_fold_by_their_offset_from_the_last_signal(self):
        # Signals at 10 and 30 ms; a period of 20 ms in slices of 10.
        ok = [1] * 60
        slow = [0] * 60
        slow[12] = 1  # 2 ms after the first
        slow[35] = 2  # 5 ms after the second
        slow[47] = 4  # 17 ms after the second
        out = slow_by_phase(result(ok, slow), [(0.010, "SIGHUP to 7"), (0.030, "SIGHUP to 7")],
                            period_ms=20, width_ms=10)
        # 10..29 after the first (20 buckets: 10 + 10), 30..49 after the second.
        self.assertEqual(out, [(0, 3, 20), (10, 4, 20)])

    def test_before_the_first_signal_and_after_the_period_are_left_out(self):
        ok, slow = [1] * 50, [1] * 50
        out = slow_by_phase(result(ok, slow), [(0.020, "SIGHUP")], period_ms=10, width_ms=5)
        self.assertEqual(out, [(0, 5, 5), (5, 5, 5)])

    def test_other_signals_do_not_count(self):
        out = slow_by_phase(result([1] * 10, [1] * 10), [(0.0, "SIGQUIT to 3")], period_ms=10, width_ms=5)
        self.assertEqual(out, [(0, 0, 0), (5, 0, 0)])

    def test_wider_timeline_buckets(self):
        # 5-ms buckets: bucket 2 starts 10 ms after t0, 5 ms after the signal at 5 ms.
        out = slow_by_phase(result([3, 3, 3, 3], [0, 1, 2, 0], step=5), [(0.005, "SIGHUP")],
                            period_ms=20, width_ms=10)
        self.assertEqual(out, [(0, 3, 6), (10, 0, 3)])


if __name__ == "__main__":
    unittest.main()
