"""python3 -m e2e.bench loss|nginx|stall|latency|bind [options]: see e2e/bench/__init__.py."""

import argparse
import sys

from . import bind, latency, loss, nginx, stall

BENCHMARKS = {"loss": loss, "nginx": nginx, "stall": stall, "latency": latency, "bind": bind}


def main():
    p = argparse.ArgumentParser(prog="python3 -m e2e.bench", description=__doc__.split(":")[0])
    sub = p.add_subparsers(dest="benchmark", required=True)
    for name, module in BENCHMARKS.items():
        module.add_arguments(sub.add_parser(name, help=module.__doc__.split(":")[0],
                                            description=module.__doc__))
    args = p.parse_args()
    return BENCHMARKS[args.benchmark].main(args)


if __name__ == "__main__":
    sys.exit(main())
