"""The scenarios ctest registers (tests/e2e/CMakeLists.txt) are the ones the package
defines, for the servers each applies to: a scenario cannot be left out of ctest, nor
registered for a server it does not apply to."""

import os
import re
import unittest

from e2e.scenarios import load_all

CMAKELISTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "CMakeLists.txt")


def cmake_lists():
    """{VARIABLE: [words]} of each set(REUSEPORT_... ) in the CMakeLists."""
    with open(CMAKELISTS) as f:
        text = re.sub(r"#[^\n]*", "", f.read())
    return {m.group(1): m.group(2).split() for m in re.finditer(r"set\((REUSEPORT_\w+)\s+([^)]*)\)", text)}


class Registry(unittest.TestCase):
    def setUp(self):
        self.scenarios = load_all()
        lists = cmake_lists()
        long = lists["REUSEPORT_LONG_SCENARIOS"]
        self.rpserver = set(lists["REUSEPORT_SCENARIOS"] + lists["REUSEPORT_STALL_SCENARIOS"]
                            + lists["REUSEPORT_FAULT_SCENARIOS"] + long)
        self.nginx_both = set(lists["REUSEPORT_NGINX_SCENARIOS"] + long + lists["REUSEPORT_NGINX_ADOPTION"]
                              + lists["REUSEPORT_NGINX_QUIC"])
        self.nginx_patched = set(lists["REUSEPORT_NGINX_PATCHED_ONLY"])
        # the Debian package's (patched only): debian_conf is registered there alone
        self.nginx_patched |= set(lists["REUSEPORT_NGINX_DEB_SCENARIOS"])
        self.nginx_stock = set(lists["REUSEPORT_NGINX_STOCK_ONLY"])

    def test_every_registered_scenario_applies_to_its_server(self):
        for name in self.rpserver:
            self.assertIn("rpserver", self.scenarios[name].servers, name)
        for name in self.nginx_both | self.nginx_patched | self.nginx_stock:
            self.assertIn("nginx", self.scenarios[name].servers, name)

    def test_every_scenario_is_registered_for_each_of_its_servers(self):
        nginx = self.nginx_both | self.nginx_patched | self.nginx_stock
        for name, sc in self.scenarios.items():
            if "rpserver" in sc.servers:
                self.assertIn(name, self.rpserver, f"{name} is not registered for rpserver")
            if "nginx" in sc.servers:
                self.assertIn(name, nginx, f"{name} is not registered for nginx")

    def test_debian_package_scenarios_apply_to_nginx(self):
        deb = cmake_lists()["REUSEPORT_NGINX_DEB_SCENARIOS"]
        self.assertIn("debian_conf", deb)
        for name in deb:
            self.assertIn("nginx", self.scenarios[name].servers, name)

    def test_patched_only_scenarios_are_not_registered_for_stock(self):
        for name, sc in self.scenarios.items():
            if sc.patched_only:
                self.assertNotIn(name, self.nginx_both | self.nginx_stock, name)


if __name__ == "__main__":
    unittest.main()
