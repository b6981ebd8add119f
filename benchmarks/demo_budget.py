"""How long the fidelity model takes on this machine, for the demo's time budget (issue 12):
one generation (2 labels, 10 steps) eager, then with torch.compile (Inductor) and with ditaccel
(dense plans), each first call (compile included) and second call, in one process.

    python benchmarks/demo_budget.py
"""
import time, torch
from ditcompile.fidelity import load_fidelity_model, sample
m = load_fidelity_model()
labels, steps = [1, 4], 10
with torch.no_grad():
    t = time.perf_counter(); sample(m, labels, steps=steps, seed=0); eager = time.perf_counter() - t
    t = time.perf_counter(); sample(m, labels, steps=steps, seed=0); eager2 = time.perf_counter() - t
    c = torch.compile(m)
    t = time.perf_counter(); sample(m, labels, steps=steps, seed=0, transformer_call=c); first = time.perf_counter() - t
    t = time.perf_counter(); sample(m, labels, steps=steps, seed=0, transformer_call=c); second = time.perf_counter() - t
    torch._dynamo.reset()
    d = torch.compile(m, backend="ditaccel", options={"preset": "wan2.1", "graph.text_position": "none"})
    t = time.perf_counter(); sample(m, labels, steps=steps, seed=0, transformer_call=d); dfirst = time.perf_counter() - t
    t = time.perf_counter(); sample(m, labels, steps=steps, seed=0, transformer_call=d); dsecond = time.perf_counter() - t
print(f"eager {eager:.2f}s/{eager2:.2f}s; torch.compile first {first:.1f}s then {second:.2f}s; ditaccel first {dfirst:.1f}s then {dsecond:.2f}s")
