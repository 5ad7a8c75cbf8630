"""The dataset build at archive scale: records per second, peak memory, and a kill -9 half-way.

  python benchmarks/build_scale.py --root=DIR [--sizes=2000,10000] [--workers=N]

Writes SIZE generated 12-lead WFDB records (500 Hz, 10 s, each its own noise) and a manifest per
size, then for each size builds the dataset once straight through; at the largest size it also
builds again with the process killed (SIGKILL) once half of the rows are done, and reruns it.
Peak memory is the largest sum of resident memory over the build's process tree (sampled every
0.2 s). Prints one JSON line per build and a markdown table; flat memory shows as the same
peak at every size.
"""

import argparse
import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run as a script from a checkout


def write_records(directory, n, seed=0):
  """`n` WFDB records (format 16, 1 uV steps): a shared ECG-like waveform plus per-record noise."""
  import wfdb  # pylint: disable=import-outside-toplevel

  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  t = np.arange(5000) / 500
  base = np.stack([np.sin(2 * np.pi * 1.2 * t + k) + 0.3 * np.sin(2 * np.pi * 7 * t * (k + 1) / 6)
                   for k in range(12)])
  leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
  paths = []
  for i in range(n):
    name = f"r{i:06d}"
    if not os.path.exists(os.path.join(directory, name + ".hea")):
      signal_mv = base * rng.uniform(0.5, 1.5) + rng.normal(0, 0.02, base.shape)
      wfdb.wrsamp(name, fs=500, units=["mV"] * 12, sig_name=leads, p_signal=signal_mv.T,
                  fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12,
                  write_dir=directory)
    paths.append(os.path.join(directory, name))
  return paths


def write_manifest(path, records):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["subject_id", "ecg_path", "lvef"])
    writer.writerows([f"s{i:06d}", p, 50 + i % 20] for i, p in enumerate(records))
  return path


def run_build(manifest, out, workers, kill_after_rows=None, chunk_rows=64):
  """(seconds, peak resident bytes of the process tree, exit status) of one build."""
  command = [sys.executable, "-m", "cardionets_jax.data.build", f"--manifest={manifest}",
             f"--out={out}", "--phenotypes=lvef:%", f"--workers={workers}",
             f"--chunk_rows={chunk_rows}"]
  start, peak = time.time(), 0
  proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  parent = psutil.Process(proc.pid)
  while proc.poll() is None:
    try:
      tree = [parent] + parent.children(recursive=True)
      peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
    except psutil.Error:
      pass
    if kill_after_rows is not None:
      done = len(glob.glob(os.path.join(out, ".rows-*", "*.npz"))) * chunk_rows
      if done >= kill_after_rows:
        proc.send_signal(signal.SIGKILL)
    time.sleep(0.2)
  return time.time() - start, peak, proc.returncode


def report(out):
  with open(os.path.join(out, "report.json")) as f:
    return json.load(f)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--root", required=True)
  parser.add_argument("--sizes", default="2000,10000")
  parser.add_argument("--workers", type=int, default=os.cpu_count())
  args = parser.parse_args(argv)
  sizes = [int(s) for s in args.sizes.split(",")]
  records = write_records(os.path.join(args.root, "records"), max(sizes))
  lines = []
  for n in sizes:
    manifest = write_manifest(os.path.join(args.root, f"manifest{n}.csv"), records[:n])
    out = os.path.join(args.root, f"straight{n}")
    seconds, peak, status = run_build(manifest, out, args.workers)
    lines.append(dict(build="straight", records=n, seconds=round(seconds, 1), status=status,
                      records_per_s=round(n / seconds, 1), peak_mib=round(peak / 2**20),
                      kept=report(out)["kept"]))
    print(json.dumps(lines[-1]), flush=True)
  n, manifest = sizes[-1], os.path.join(args.root, f"manifest{sizes[-1]}.csv")
  out = os.path.join(args.root, f"killed{n}")
  seconds, peak, status = run_build(manifest, out, args.workers, kill_after_rows=n // 2)
  done = len(glob.glob(os.path.join(out, ".rows-*", "*.npz")))
  lines.append(dict(build="killed half-way", records=n, seconds=round(seconds, 1), status=status,
                    peak_mib=round(peak / 2**20), chunks_done=done))
  print(json.dumps(lines[-1]), flush=True)
  seconds, peak, status = run_build(manifest, out, args.workers)
  r = report(out)
  ids = [d["subject_id"] for d in r["details"]]
  lines.append(dict(build="rerun", records=n, seconds=round(seconds, 1), status=status,
                    peak_mib=round(peak / 2**20), kept=r["kept"], rows_resumed=r["rows_resumed"],
                    every_record_once=len(ids) == len(set(ids)) == n))
  print(json.dumps(lines[-1]), flush=True)
  print("\n| build | records | s | records/s | peak MiB | kept | resumed |\n|---|---|---|---|---|---|---|")
  for line in lines:
    print(f"| {line['build']} | {line['records']} | {line['seconds']} | "
          f"{line.get('records_per_s', '')} | {line['peak_mib']} | {line.get('kept', '')} | "
          f"{line.get('rows_resumed', '')} |")


if __name__ == "__main__":
  main()
