"""Every stage's train step at one size, in one command: a JSON line per stage and a markdown table.

  python benchmarks/report.py                                  # base sizes, batch 8
  python benchmarks/report.py --compare=main --out=runs/perf   # this tree against a commit
  python benchmarks/report.py --stages=align,mae --variant=tiny

Each stage runs benchmarks/step.py in its own process (compile time, s/step, samples/s, TFLOP/s,
temporaries per device, and the same-process matmul roofline measured right before and after
it). With `--compare=REV` the tree at REV (a temporary git worktree) runs the same script with
its own package on the path, interleaved with this tree stage by stage, so both see the same
machine; the table then gives REV's s/step and the speed-up.
"""

import contextlib
import json
import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

_STAGES = flags.DEFINE_list("stages", ["mae", "align", "stmem", "vae", "mar", "finetune"],
                            "Stages to time.")
_VARIANT = flags.DEFINE_string("variant", "base", "Config variant.")
_BATCH = flags.DEFINE_integer("batch", 8, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 2, "Timed steps per stage (after one warm-up step).")
_COMPARE = flags.DEFINE_string("compare", None, "A git revision to time against, interleaved.")
_OUT = flags.DEFINE_string("out", None, "Folder for report.jsonl and report.md (default: print).")

HERE = os.path.dirname(os.path.abspath(__file__))
TREE = os.path.dirname(HERE)


@contextlib.contextmanager
def worktree(rev):
  """A temporary checkout of `rev`, with `cardionets_jax_configs` importable from its configs/."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "tree")
    subprocess.run(["git", "-C", TREE, "worktree", "add", "--detach", "-q", path, rev], check=True)
    try:
      os.symlink(os.path.join(path, "configs"), os.path.join(tmp, "cardionets_jax_configs"))
      yield path, [tmp, path]
    finally:
      subprocess.run(["git", "-C", TREE, "worktree", "remove", "--force", path], check=True)


def time_stage(stage, tree, python_path):
  """benchmarks/step.py (this tree's) on `tree`'s package: its JSON line as a dict."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(python_path))
  cmd = [sys.executable, os.path.join(HERE, "step.py"),
         f"--config={tree}/configs/{stage}.py:variant={_VARIANT.value}",
         f"--config.train.batch_size={_BATCH.value}", f"--steps={_STEPS.value}"]
  proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    return dict(stage=stage, error=(proc.stderr.strip().splitlines() or ["no output"])[-1])
  return json.loads(lines[-1])


def markdown(rows, compare):
  head = ("| stage | s/step | samples/s | TFLOP/s | matmul TFLOP/s before / after | ratio to "
          "roofline | temporaries GB | compile s |")
  if compare:
    head += f" {compare} s/step | speed-up |"
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for row in rows:
    r = row["this"]
    if "error" in r:
      lines.append(f"| {r['stage']} | error: {r['error']} |")
      continue
    line = (f"| {r['stage']} | {r['step_time_s']:.3f} | {r['samples_per_s']:.2f} | "
            f"{r['achieved_tflops']:.3f} | {r['matmul_tflops_before']:.3f} / "
            f"{r['matmul_tflops_after']:.3f} | {r['roofline_ratio']:.2f} | "
            f"{(r['temp_bytes_per_device'] or 0) / 1e9:.2f} | {r['compile_s']:.1f} |")
    if compare:
      o = row["other"]
      line += (f" error: {o['error']} | - |" if "error" in o else
               f" {o['step_time_s']:.3f} | {o['step_time_s'] / r['step_time_s']:.2f}x |")
    lines.append(line)
  return "\n".join(lines)


def main(argv):
  del argv
  with contextlib.ExitStack() as stack:
    other = stack.enter_context(worktree(_COMPARE.value)) if _COMPARE.value else None
    rows = []
    for stage in _STAGES.value:
      row = dict(this=time_stage(stage, TREE, [TREE]))
      if other:
        row["other"] = time_stage(stage, *other)
        row["other"]["rev"] = _COMPARE.value
      print(json.dumps(row), flush=True)
      rows.append(row)
  table = markdown(rows, _COMPARE.value)
  print(table)
  if _OUT.value:
    os.makedirs(_OUT.value, exist_ok=True)
    with open(os.path.join(_OUT.value, "report.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(_OUT.value, "report.md"), "w") as f:
      f.write(table + "\n")


if __name__ == "__main__":
  app.run(main)
