"""Every scenario, once, written against the server adapters' common interface
(servers/base.py). A scenario performs its events under load (ctx.load()), stops the
load into ctx.result, may assert things of its own, and returns the master whose listen
sockets the runner checks afterwards (None: nothing to check). The runner then judges
the load's failures (verdict.losses).

A scenario says which servers it applies to: some exercise one server's own features
(rpserver's config, nginx's modules and directives), some need the library in the build
(patched_only: the runner skips them for stock nginx)."""

import importlib
from dataclasses import dataclass

SCENARIOS = {}
MODULES = ("lifecycle", "bad_clients", "privileges", "nginx_features", "stall", "faults", "adoption", "quic", "scale",
           "debian")


@dataclass(frozen=True)
class Scenario:
    name: str
    run: object  # run(srv, ctx) -> master or None
    servers: frozenset
    patched_only: bool


def scenario(servers=("rpserver", "nginx"), patched_only=False):
    def register(fn):
        SCENARIOS[fn.__name__] = Scenario(fn.__name__, fn, frozenset(servers), patched_only)
        return fn
    return register


def load_all():
    """Imports every scenario module (each registers its scenarios); returns SCENARIOS."""
    for module in MODULES:
        importlib.import_module(f"{__name__}.{module}")
    return SCENARIOS
