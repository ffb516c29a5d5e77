"""The benchmarks, beside the tests: each runs e2e.run scenarios in fresh network
namespaces, many times, and prints Markdown tables (progress on stderr). Root needed.

  python3 -m e2e.bench loss   ...  lifecycle scenarios x strategies at saturation (rpserver)
  python3 -m e2e.bench nginx  ...  stock and patched nginx side by side
  python3 -m e2e.bench stall  ...  one worker stopped: stock nginx, rpserver, patched nginx
  python3 -m e2e.bench latency ... tail latency through reloads and upgrades: stock and
                                   patched nginx, rpserver

scripts/bench.sh builds what they need and runs them."""
