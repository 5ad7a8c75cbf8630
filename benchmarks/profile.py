"""Per-op profile of a stage's compiled train step: where the step's time goes.

  python benchmarks/profile.py --config=configs/align.py:variant=base --config.train.batch_size=8

Runs `--steps` steps under `jax.profiler.trace`, reads the trace back (`jax.profiler.ProfileData`)
and sums the device-side op events per HLO instruction, each named by the source op that made it
(the instruction's `op_name` metadata, e.g. `.../ecg_encoder/transformer/block3/attn/...`). Prints
the top `--top` instructions and the totals per model scope (`--depth` path components), as
percentages of the summed op time, and one JSON line with the same table.
"""

import collections
import glob
import json
import re
import tempfile

import jax
from absl import app
from absl import flags

import step as step_bench

# --config and --steps (the traced steps, after one warm-up step) are benchmarks/step.py's.
_CONFIG, _STEPS = step_bench._CONFIG, step_bench._STEPS
_TOP = flags.DEFINE_integer("top", 25, "Instructions listed.")
_DEPTH = flags.DEFINE_integer("depth", 4, "Scope components kept when summing by scope.")

_META = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{[^}]*op_name=\"([^\"]+)\"")
# Op events run on XLA's thread pools; Python and PjRt client calls are host-side spans.
_SKIP = ("ThreadpoolListener", "ThunkExecutor", "end: ", "$", "PjitFunction", "PjRt")


def op_names(hlo_text):
  """{instruction name: op_name metadata} of every instruction in the compiled HLO."""
  names = {}
  for line in hlo_text.splitlines():
    m = _META.match(line)
    if m:
      names[m.group(1)] = m.group(2)
  return names


def scope(op_name, depth):
  """`jit(step)/transpose(jvp(AlignModel))/AlignModel.ecg_features/ecg_encoder/ecg_encoder.encode/
  transformer/block3/attn/dot_general` -> `bwd AlignModel/ecg_encoder/transformer/block*`: the
  first `depth` module names (methods and other transforms dropped, block indices merged), marked
  fwd or bwd (under a transpose)."""
  parts = []
  for part in op_name.split("/")[1:]:
    m = re.fullmatch(r"(?:transpose\()?jvp\((\w+)\)\)?", part)
    if m:
      parts.append(m.group(1))
    elif "(" not in part and "." not in part:
      parts.append(re.sub(r"^block\d+$", "block*", part))
  return ("bwd " if "transpose(" in op_name else "fwd ") + "/".join(parts[:depth])


def op_times(trace_dir):
  """{event name: total ns} of every op event in the trace's XLA thread-pool lines."""
  path = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1]
  totals = collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(path).planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLA"):
        continue
      for event in line.events:
        if not event.name.startswith(_SKIP):
          totals[event.name] += event.duration_ns
  return totals


def main(argv):
  del argv
  config = _CONFIG.value
  compiled, run, _ = step_bench.compiled_step(config)
  run(1)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      run(_STEPS.value)
    totals = op_times(trace_dir)
  names = op_names(compiled.as_text())
  total = sum(totals.values()) or 1
  by_scope = collections.Counter()
  for event, ns in totals.items():
    by_scope[scope(names.get(event, event), _DEPTH.value)] += ns
  ms_per_step = lambda ns: ns / 1e6 / _STEPS.value
  print(f"summed op time {ms_per_step(total):.0f} ms/step over {len(totals)} instructions")
  print("\n-- top instructions --")
  for event, ns in totals.most_common(_TOP.value):
    print(f"{100 * ns / total:5.1f}% {ms_per_step(ns):8.1f} ms  {event:28s} {names.get(event, '')}")
  print("\n-- by scope --")
  for name, ns in by_scope.most_common():
    if ns / total >= 0.005:
      print(f"{100 * ns / total:5.1f}% {ms_per_step(ns):8.1f} ms  {name}")
  print(json.dumps(dict(stage=config.stage, variant=config.variant,
                        batch_size=config.train.batch_size, ms_per_step=ms_per_step(total),
                        by_scope={k: round(v / total, 4) for k, v in by_scope.most_common() if v / total >= 0.005})))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
