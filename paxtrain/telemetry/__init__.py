"""Knowing a run before and while it runs: what it trains and needs (`Trainer.summary`,
`paxtrain summary`), and the numbers behind the hooks `train.utilization.Utilization` (MFU and
memory in the logs) and `train.watchdog.Watchdog` (a run whose steps stopped finishing ends).
Nothing here imports `paxtrain.train` at import time: the trainer and its hooks build on it.

| file | idea |
|---|---|
| `parameters.py` | parameter counts, by module |
| `flops.py` | model FLOPs: a model's formula, or the matmuls of its jaxpr (scans times length) |
| `memory.py` | bytes per device of a laid-out state, a compiled step's memory, memory in use |
| `peak_flops.py` | peak FLOP/s by device kind and dtype |
| `model_info.py` | `ModelInfo`: parameters, model FLOPs per step, compute dtype |
| `summary.py` | `Summary`: all of the above for a trainer, a model and data, and its verdict |
"""
