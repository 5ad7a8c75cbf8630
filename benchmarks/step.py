"""Times a stage's compiled train step and reports throughput and FLOP utilisation.

  python benchmarks/step.py --config=configs/mae.py
  python benchmarks/step.py --config=configs/mae.py:variant=base --steps=3

Prints one JSON line: step time (compilation excluded), samples/s, analytic
TFLOP per step, achieved TFLOP/s, and its ratio to the device's dense-matmul
throughput: the chip's peak on an accelerator (MFU), a measured float32
matmul on CPU; and the same-process float32 2048^3 matmul rate measured right
before and right after the stage (`roofline_ratio`: achieved over their mean), since a shared
machine's speed drifts.
"""

import json
import time

import jax
import jax.numpy as jnp
from absl import app
from absl import flags
from ml_collections import config_flags

from cardionets_jax import stages
from cardionets_jax.train import mesh as mesh_lib
from cardionets_jax.train import program as program_lib
from cardionets_jax.train import state as state_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config file.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after one warm-up step).")

# Dense bf16 peak TFLOP/s per chip, from the vendors' data sheets.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "TPU v4": 275.0,
               "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v6 lite": 918.0,
               "TPU v6e": 918.0}


def measured_matmul_tflops(n=2048, repeats=10):
  """Float32 dense-matmul throughput of one device, measured."""
  x = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    y = f(x)
  y.block_until_ready()
  return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def device_peak_tflops():
  kind = jax.devices()[0].device_kind
  for name, peak in PEAK_TFLOPS.items():
    if name.lower() in kind.lower():
      return peak * jax.device_count(), f"{kind} peak (bf16, data sheet)"
  return measured_matmul_tflops() * jax.device_count(), f"{kind} measured float32 matmul"


def compiled_step(config):
  """(compiled step, run(n) -> seconds per step, info) for `config`'s train step on a random
  batch: `run` calls the compiled step `n` times on the running state."""
  stage = stages.get(config.stage)
  program = program_lib.build(config, stage.task(config))
  mesh, rules = program.mesh, program.rules
  holder = dict(state=program.init_state(config.seed))
  batch = program_lib.random_batch(program.spec, config.train.batch_size)
  with mesh_lib.active(mesh, rules):
    batch = mesh_lib.global_batch(batch, mesh, rules)
    start = time.perf_counter()
    compiled = program.step.lower(holder["state"], batch).compile()
    compile_s = time.perf_counter() - start

  def run(n):
    with mesh_lib.active(mesh, rules):
      start = time.perf_counter()
      for _ in range(n):
        holder["state"], metrics = compiled(holder["state"], batch)
      jax.block_until_ready((holder["state"], metrics))
    return (time.perf_counter() - start) / n

  info = dict(stage=stage, compile_s=compile_s,
              params=state_lib.param_count(program.abstract_params))
  return compiled, run, info


def main(argv):
  del argv
  config = _CONFIG.value
  roofline_before = measured_matmul_tflops()
  compiled, run, info = compiled_step(config)
  stage, compile_s = info["stage"], info["compile_s"]
  run(1)  # warm-up
  step_time = run(_STEPS.value)
  roofline_after = measured_matmul_tflops()

  tflop = stage.train_flops(config) * config.train.batch_size / 1e12
  achieved = tflop / step_time
  peak, peak_source = device_peak_tflops()
  memory = compiled.memory_analysis()
  print(json.dumps(dict(
      stage=config.stage, variant=config.variant, devices=jax.device_count(),
      device_kind=jax.devices()[0].device_kind, batch_size=config.train.batch_size,
      compute_dtype=config.train.compute_dtype, params=info["params"],
      compile_s=round(compile_s, 2), step_time_s=step_time,
      samples_per_s=config.train.batch_size / step_time, tflop_per_step=tflop,
      achieved_tflops=achieved, reference_tflops=peak, reference=peak_source,
      utilisation=achieved / peak, matmul_tflops_before=roofline_before,
      matmul_tflops_after=roofline_after,
      roofline_ratio=achieved / (0.5 * (roofline_before + roofline_after)),
      temp_bytes_per_device=getattr(memory, "temp_size_in_bytes", None),
      argument_bytes_per_device=getattr(memory, "argument_size_in_bytes", None))))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
