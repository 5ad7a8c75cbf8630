"""The stage graph, declared once.

    mae -> align -> finetune          (finetune's `cmr` baseline reads mae alone)
    vae + align -> tokenize -> mar    (mar also reads mae, for its phenotype probe)
    stmem -> align, finetune          (only when asked for: align's ECG init, finetune's `stmem`)

Each stage module defines `STAGE`: its name, the upstream stages a given config reads, what it
hands on, `run(config, context)`, and for trained stages how it builds its task (shape-only:
benchmarks and AOT compiles build the same program the trainer runs) and its analytic FLOPs. `cardionets_jax.orchestrate` resolves the graph before any
trainer exists and runs what is missing; no stage runs another.
"""

import dataclasses
import importlib
from typing import Callable, Optional

NAMES = ("stmem", "mae", "align", "finetune", "vae", "tokenize", "mar")


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  upstream: Callable            # config -> names of the upstream stages this config reads
  hands_on: str                 # what downstream stages read from it
  run: Callable                 # (config, context.Context) -> results dict
  task: Optional[Callable] = None   # config -> loop.Task with random upstream weights (None:
                                    # nothing trains; tokenize writes a dataset)
  train_flops: Optional[Callable] = None  # config -> analytic FLOPs of one training example


def get(name):
  if name not in NAMES:
    raise ValueError(f"Unknown stage {name!r}; known: {NAMES}")
  return importlib.import_module(f"cardionets_jax.stages.{name}").STAGE
