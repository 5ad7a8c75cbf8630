"""Ahead-of-time compiles a stage's real train step for a device topology, on any host.

  python -m cardionets_jax.compile --config=configs/mae.py:variant=base --topology=v5p:4x4x4

A Cloud TPU topology (`v5p:4x4x4`, `v5e:8x8`, `v4:2x2x2`, `v6e:4x4`...) needs
libtpu (the `[tpu]` install extra) but no TPU: the compiler runs on this
host. `cpu:N` compiles for N local CPU devices (set
XLA_FLAGS=--xla_force_host_platform_device_count=N). The mesh is the
config's `mesh.shape` over the topology's chips and the batch is
`train.batch_size` (global), so what fits here is what the same config does
on the slice.

Prints one JSON line: per-device argument, output, temporary and peak bytes
(XLA's memory analysis of the compiled program), the chip's HBM and a
verdict (`fits` or `does_not_fit`), the analytic FLOPs per step (XLA's cost
analysis is printed too, but it undercounts loops such as gradient
accumulation), and the compile time. A program the compiler rejects for
memory gets `does_not_fit` with the compiler's message, not a crash.
"""

import json
import time

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config file.")
_TOPOLOGY = flags.DEFINE_string("topology", None, "e.g. v5p:4x4x4, v5e:8x8, or cpu:8.")
_HBM_GIB = flags.DEFINE_float("hbm_gib", None, "Memory per device to check against (default: the "
                              "TPU chip's HBM; needed for a verdict on other devices).")

# HBM per chip (GiB), from the vendors' data sheets; keys match the compile-only device_kind.
HBM_GIB = {"TPU v4": 32, "TPU v5 lite": 16, "TPU v5e": 16, "TPU v5p": 95, "TPU v5": 95,
           "TPU v6 lite": 32, "TPU v6e": 32, "TPU7x": 192}



def topology_devices(topology):
  import jax
  if topology.startswith("cpu:"):
    n = int(topology.split(":", 1)[1])
    devices = jax.devices("cpu")
    if len(devices) < n:
      raise ValueError(f"{topology}: only {len(devices)} CPU devices; set "
                       f"XLA_FLAGS=--xla_force_host_platform_device_count={n}")
    return devices[:n]
  from jax.experimental import topologies
  try:
    return list(topologies.get_topology_desc(topology, platform="tpu").devices)
  except Exception as e:  # no libtpu, or a name it does not know
    raise SystemExit(f"Cannot describe TPU topology {topology!r} ({type(e).__name__}: {e}). "
                     "Install the TPU compiler with `pip install -e '.[tpu]'`; names look like "
                     "v5p:4x4x4, v5e:8x8, v4:2x2x2, v6e:4x4.") from e


def hbm_bytes(device_kind):
  for name, gib in sorted(HBM_GIB.items(), key=lambda kv: -len(kv[0])):
    if device_kind.lower().startswith(name.lower()):
      return gib * 2**30
  return None


def compile_train_step(config, devices, hbm_gib=None):
  """Lowers and compiles `config`'s train step for `devices`; returns a dict of figures.

  The verdict compares the peak with `hbm_gib` GiB per device, by default the TPU chip's HBM."""
  import flax.linen as nn

  from cardionets_jax import stages
  from cardionets_jax.train import mesh as mesh_lib
  from cardionets_jax.train import program as program_lib
  from cardionets_jax.train import state as state_lib

  stage = stages.get(config.stage)
  if stage.task is None:
    raise SystemExit(f"The {config.stage} stage trains nothing: there is no step to compile")
  program = program_lib.build(config, stage.task(config), mesh_lib.make_mesh(config.mesh, devices))
  mesh, rules, abstract = program.mesh, program.rules, program.abstract
  b = config.train.batch_size
  state, batch = program.abstract_state(), program.abstract_batch(b)
  kind = devices[0].device_kind
  hbm = int(hbm_gib * 2**30) if hbm_gib else (hbm_bytes(kind) if devices[0].platform == "tpu" else None)
  out = dict(stage=config.stage, variant=config.variant, device_kind=kind, devices=len(devices),
             mesh=dict(mesh.shape), batch_size=b, grad_accum_steps=config.train.grad_accum_steps,
             compute_dtype=config.train.compute_dtype,
             params=state_lib.param_count(nn.unbox(abstract.params)),
             analytic_tflop_per_step=stage.train_flops(config) * b / 1e12,
             hbm_bytes_per_device=hbm)
  start = time.perf_counter()
  try:
    with mesh_lib.active(mesh, rules):
      compiled = program.step.lower(state, batch).compile()
  except Exception as e:  # the compiler refuses programs that overflow HBM
    message = str(e)
    if "RESOURCE_EXHAUSTED" not in message and "memory" not in message.lower():
      raise
    out.update(verdict="does_not_fit", compile_s=round(time.perf_counter() - start, 1),
               reason=message.strip().splitlines()[0][:500])
    return out
  out["compile_s"] = round(time.perf_counter() - start, 1)
  memory = compiled.memory_analysis()
  argument = int(memory.argument_size_in_bytes)
  output = int(memory.output_size_in_bytes)
  temp = int(memory.temp_size_in_bytes)
  alias = int(memory.alias_size_in_bytes)
  peak = argument + output - alias + temp  # donated state: outputs reuse the arguments' buffers
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  out.update(argument_bytes_per_device=argument, output_bytes_per_device=output,
             temp_bytes_per_device=temp, alias_bytes_per_device=alias, peak_bytes_per_device=peak,
             xla_cost_analysis_tflop_per_device=float((cost or {}).get("flops", 0.0)) / 1e12)
  if hbm is not None:
    out["verdict"] = "fits" if peak <= hbm else "does_not_fit"
    out["peak_fraction_of_hbm"] = peak / hbm
  else:
    out["verdict"] = "compiled (no memory figure for this device kind: pass --hbm_gib)"
  return out


def main(argv):
  del argv
  config = _CONFIG.value
  print(json.dumps(compile_train_step(config, topology_devices(_TOPOLOGY.value), _HBM_GIB.value)))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "topology"])
  app.run(main)
