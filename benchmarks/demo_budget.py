"""How long the fidelity model takes on this machine, for the demo's time budget (issue 12):
one generation (2 labels, 10 steps) eager, then with torch.compile (Inductor) and with ditaccel
(dense plans), each first call (compile included) and second call, in one process. Prints a
table and writes JSON.

    python benchmarks/demo_budget.py [--out benchmarks/out/demo_budget.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from ditcompile.fidelity import load_fidelity_model, sample
from ditcompile.fileio import atomic_write_text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/out/demo_budget.json")
    args = parser.parse_args(argv)
    model = load_fidelity_model()
    labels, steps = [1, 4], 10
    calls = {
        "eager": None,
        "torch.compile": lambda: torch.compile(model),
        "ditaccel (dense plans)": lambda: torch.compile(model, backend="ditaccel",
                                                        options={"preset": "wan2.1", "graph.text_position": "none"}),
    }
    rows = []
    with torch.no_grad():
        for name, make in calls.items():
            torch._dynamo.reset()
            call = make() if make is not None else None
            times = []
            for _ in range(2):
                start = time.perf_counter()
                sample(model, labels, steps=steps, seed=0, transformer_call=call)
                times.append(time.perf_counter() - start)
            rows.append({"variant": name, "first_s": times[0], "second_s": times[1]})
    print(f"{'variant':<26}{'first call (s)':>16}{'second call (s)':>17}")
    for r in rows:
        print(f"{r['variant']:<26}{r['first_s']:>16.2f}{r['second_s']:>17.2f}")
    meta = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "labels": labels, "steps": steps,
            "command": " ".join(sys.argv)}
    atomic_write_text(args.out, json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
