"""Tune the attention kernels of a Wan transformer, then compile it with the tuned choices.

    python examples/autotune_wan.py           # a small random Wan (CPU is fine; a GPU has more candidates)

The same as `ditaccel autotune --model wan2.1-tiny --cache-dir ./tuning` followed by
`ditaccel explain --model wan2.1-tiny -o autotune.cache_dir='./tuning'`. With a real model, run
`ditaccel autotune --preset wan2.1 --resolution 480x832x81` once per machine; every later
`torch.compile(..., backend="ditaccel")` in any process reads the cache (autotune.mode="offline").
"""
import tempfile

import torch

import ditcompile
from ditcompile.autotune import Autotuner
from ditcompile.models import get_tiny_model, run_model
from ditcompile.tuning import model_problems, tune_recorded, winners_table


def main() -> None:
    spec = get_tiny_model("wan2.1-tiny")
    transformer = spec.build()
    inputs = spec.make_inputs(batch_size=1, seed=0)
    with tempfile.TemporaryDirectory(prefix="ditaccel-tuning-") as cache_dir:  # your own folder: keep it
        run_example(spec, transformer, inputs, {"preset": "wan2.1", "autotune.cache_dir": cache_dir}, cache_dir)


def run_example(spec, transformer, inputs, options: dict, cache_dir: str) -> None:
    # 1. Record the model's attention problems (one forward, no Inductor), validate and time every
    #    candidate kernel on each, save the winners.
    recorded = model_problems(spec, options)
    run = tune_recorded(recorded, Autotuner("online", cache_dir), budget_s=60)
    print(winners_table(run.results))

    # 2. The explain report names the kernel each site ran and where the choice came from.
    print(ditcompile.explain(transformer, **inputs, options=options).format())

    # 3. Compile for real: the op looks the choice up per call (shapes may be symbolic at compile time).
    torch._dynamo.reset()
    compiled = torch.compile(transformer, backend="ditaccel", options=options)
    with torch.no_grad():
        err = (run_model(compiled, inputs) - run_model(transformer, inputs)).abs().max().item()
    print(f"max |compiled - eager| = {err:.2e}")


if __name__ == "__main__":
    main()
