"""Compile a diffusers Wan transformer with ditaccel and print what the backend did.

    python examples/compile_wan.py            # a small random Wan (CPU is fine)

With a real checkpoint, replace `build()` by
`WanTransformer3DModel.from_pretrained(".../Wan2.1-T2V-1.3B-Diffusers", subfolder="transformer")`
or use the pipeline: `pipe.transformer = torch.compile(pipe.transformer, backend="ditaccel",
options="wan2.1")`.
"""
import logging

import torch

import ditcompile
from ditcompile.models import get_tiny_model, run_model


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the backend logs its report
    spec = get_tiny_model("wan2.1-tiny")
    transformer = spec.build()
    inputs = spec.make_inputs(batch_size=1, seed=0)

    # 1. What will the backend do? (runs the model once, no Inductor)
    print(ditcompile.explain(transformer, **inputs, options="wan2.1").format())

    # 2. Compile for real; the report is logged again at INFO when Dynamo hands over the graph.
    torch._dynamo.reset()
    compiled = torch.compile(transformer, backend="ditaccel", options={"preset": "wan2.1"})
    with torch.no_grad():
        reference = run_model(transformer, inputs)
        output = run_model(compiled, inputs)
    print(f"max |compiled - eager| = {(output - reference).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
