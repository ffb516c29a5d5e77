"""Many workers: more than the 128 steering slots the library once had, and a reload of a
hundred workers under load, whose new generation must get its share at once."""

import time

from prefork.wait import check

from . import scenario
from .lifecycle import BOTH

MANY = 200
RELOADED = 100


@scenario(servers=["nginx"])
def workers200(srv, ctx):
    """`worker_processes 200`, one address, under load for 6 s: every worker serves (the
    load client counts the answers per worker pid), and the patched build's log says
    nothing of a full steering table."""
    addr = [BOTH[0]]
    srv.configure(MANY, addr)
    workers = srv.start()
    master = srv.master()
    load = ctx.load(addr)
    time.sleep(6)
    ctx.result = load.stop()
    served = set(ctx.result["workers"])
    idle = [w for w in workers if str(w) not in served]
    ctx.note(f"{len(workers)} workers, {len(served & {str(w) for w in workers})} served; "
             f"fewest answers {min((ctx.result['workers'].get(str(w), 0) for w in workers), default=0)}")
    check(len(workers) == MANY, f"{len(workers)} workers, expected {MANY}")
    check(not idle, f"{len(idle)} of {MANY} workers served nothing: {idle[:10]}...")
    full = [line for line in srv.log_lines() if "steering slots are taken" in line]
    check(not full, f"the log speaks of a full steering table: {full[:2]}")
    return master


@scenario(servers=["nginx"])
def reload100w(srv, ctx):
    """100 workers, IPv4 and IPv6, three reloads 1.5 s apart under load: nothing fails, and
    after each reload the new generation serves (every one of its workers answers before
    the next reload). The latency benchmark compares its tail with stock nginx's."""
    srv.configure(RELOADED, BOTH)
    srv.start()
    master = srv.master()
    load = ctx.load(BOTH)
    time.sleep(1)
    generations = []
    for _ in range(3):
        generations.append(srv.reload(master))
        time.sleep(1.5)
    ctx.result = load.stop()
    shares = ctx.result["workers"]
    for n, gen in enumerate(generations, 1):
        idle = [w for w in gen if str(w) not in shares]
        ctx.note(f"reload {n}: {len(gen) - len(idle)} of {len(gen)} new workers served")
        check(len(idle) <= len(gen) // 10,
              f"reload {n}: {len(idle)} of {len(gen)} new workers served nothing in 1.5 s under load")
    return master
