"""``python -m tembed_bench COMMAND [ARGS]``: run (the harness), render, budget, rerank, soak, perf, gpu."""

import importlib
import sys

COMMANDS = {"run": "harness", "render": "render", "budget": "budget", "rerank": "rerank"}
COMMANDS |= {"soak": "soak", "perf": "perf", "gpu": "gpu"}

if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    raise SystemExit(f"usage: python -m tembed_bench {{{','.join(COMMANDS)}}} [ARGS]  (each has --help)")
module = importlib.import_module(f"tembed_bench.{COMMANDS[sys.argv[1]]}")
raise SystemExit(module.main(sys.argv[2:]))
