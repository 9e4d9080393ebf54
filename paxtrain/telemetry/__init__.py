"""Knowing a run before and while it runs: what it trains and needs (`Trainer.summary`,
`paxtrain summary`), its model FLOPs utilisation and memory in the logs (`Utilization`), and a
watchdog that ends a run whose steps stopped finishing (`Watchdog`).

| file | idea |
|---|---|
| `parameters.py` | parameter counts, by module |
| `flops.py` | model FLOPs: a model's formula, or the matmuls of its jaxpr (scans times length) |
| `memory.py` | bytes per device of a laid-out state, a compiled step's memory, memory in use |
| `peak_flops.py` | peak FLOP/s by device kind and dtype |
| `summary.py` | `Summary`: all of the above for a trainer, a model and data, and its verdict |
| `utilization.py` | the `Utilization` hook: `perf/mfu`, tokens/s per device, memory |
| `watchdog.py` | the `Watchdog` hook: stacks and a distinct exit code when steps stop |
"""
