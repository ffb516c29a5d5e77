"""The soak's per-window judgement (soak_checks.History): growth against the first
window with as many workers, processes and listeners as the design says."""

import unittest

from e2e.soak_checks import History


def window(**kw):
    r = {"processes": 3, "workers": 2, "listen_sockets": 4, "addresses": 2, "master_fds": 12,
         "worker_fds_max": 15, "master_rss_kib": 3000, "worker_rss_kib_max": 3600, "bpf_progs": 2, "bpf_maps": 4}
    r.update(kw)
    return r


class SoakHistory(unittest.TestCase):
    def test_steady_figures_pass(self):
        h = History("rpserver")
        self.assertEqual(h.add(window()), [])
        self.assertEqual(h.add(window(master_fds=13, master_rss_kib=3500)), [])

    def test_fd_growth_fails(self):
        h = History("rpserver")
        h.add(window())
        self.assertTrue(any("master_fds" in p for p in h.add(window(master_fds=20))))

    def test_rss_growth_beyond_the_slack_fails(self):
        h = History("rpserver")
        h.add(window())
        self.assertTrue(any("master_rss_kib" in p for p in h.add(window(master_rss_kib=3000 + 8192))))

    def test_baselines_are_per_worker_count(self):
        h = History("nginx")
        h.add(window(workers=1, processes=2, listen_sockets=2, master_fds=14))
        self.assertEqual(h.add(window(workers=3, processes=4, listen_sockets=6, master_fds=18)), [])
        self.assertTrue(h.add(window(workers=1, processes=2, listen_sockets=2, master_fds=18)))

    def test_leftover_processes_and_listeners_fail(self):
        h = History("rpserver")
        problems = h.add(window(processes=4, listen_sockets=6))
        self.assertEqual(len(problems), 2)

    def test_more_bpf_objects_fail(self):
        h = History("rpserver")
        h.add(window())
        self.assertTrue(h.add(window(bpf_maps=6)))


if __name__ == "__main__":
    unittest.main()
