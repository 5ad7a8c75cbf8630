"""Screening: from ECG files to phenotypes, disease risks, a synthetic cine and a one-page report.

  python -m cardionets_jax.predict --workdir=DIR --ecg=PATH [PATH ...] --out=OUT

PATH is an ECG record (WFDB, DICOM waveform, .npy / .csv with --fs), a
directory of them, or a manifest CSV with an `ecg_path` column (and
optionally `subject_id`, `ecg_fs`). DIR is a workdir where finetune (and,
for the cine, mar) have run. Per record OUT gets <record>.json,
<record>.nii.gz, <record>.gif and <record>.png; OUT/summary.csv has a row
per record, failures included. The exit status is 1 when any record failed.
"""

import argparse
import csv
import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cardionets_jax.data import datasets
from cardionets_jax.data import pipeline
from cardionets_jax.data import preprocess
from cardionets_jax.data import readers
from cardionets_jax.stages import align
from cardionets_jax.stages import common
from cardionets_jax.stages import finetune
from cardionets_jax.stages import mar as mar_stage
from cardionets_jax.stages import vae as vae_stage
from cardionets_jax.train import checkpoint as ckpt_lib
from cardionets_jax.train import mesh as mesh_lib
from cardionets_jax.train import metrics as metrics_lib

ECG_SUFFIXES = (".hea", ".dcm", ".npy", ".csv")
REFERENCE_PERCENTILES = (2.5, 97.5)


# ---- inputs ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Record:
  name: str
  path: str
  fs: float = None


def _is_manifest(path):
  with open(path, newline="") as f:
    header = next(csv.reader(f), [])
  return "ecg_path" in [h.strip() for h in header]


def find_records(paths, fs=None):
  """Expands files, directories and manifests into records with unique, file-safe names."""
  found = []
  for path in paths:
    if os.path.isdir(path):
      for root, _, files in sorted(os.walk(path)):
        for f in sorted(files):
          stem, ext = os.path.splitext(f)
          if ext.lower() in ECG_SUFFIXES:
            target = os.path.join(root, stem if ext.lower() == ".hea" else f)
            found.append(Record(stem, target, fs))
    elif path.lower().endswith(".csv") and os.path.isfile(path) and _is_manifest(path):
      base = os.path.dirname(os.path.abspath(path))
      with open(path, newline="") as f:
        for row in csv.DictReader(f):
          target = row["ecg_path"].strip()
          target = target if os.path.isabs(target) else os.path.join(base, target)
          name = (row.get("subject_id") or "").strip() or os.path.splitext(os.path.basename(target))[0]
          row_fs = (row.get("ecg_fs") or "").strip()
          found.append(Record(name, target, float(row_fs) if row_fs else fs))
    else:
      stem = os.path.basename(path)
      for ext in ECG_SUFFIXES:
        if stem.lower().endswith(ext):
          stem = stem[:-len(ext)]
      found.append(Record(stem, path[:-4] if path.lower().endswith(".hea") else path, fs))
  seen = {}
  for r in found:
    r.name = "".join(c if c.isalnum() or c in "-_." else "_" for c in r.name) or "record"
    count = seen.get(r.name, 0)
    seen[r.name] = count + 1
    if count:
      r.name = f"{r.name}_{count + 1}"
  return found


# ---- models ------------------------------------------------------------------------------------


def load_config(checkpoint_dir):
  """The config a stage saved with its latest checkpoint."""
  step = ckpt_lib.latest_step(checkpoint_dir)
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {checkpoint_dir}")
  with open(os.path.join(checkpoint_dir, str(step), "config", "metadata")) as f:
    return ml_collections.ConfigDict(json.load(f)), step


def choose_method(results, name=None):
  """The named finetune method, else the aligned ECG encoder fine-tuned on the most labels."""
  methods = results["methods"]
  if name:
    if name not in methods:
      raise ValueError(f"No finetune method {name!r}; trained: {sorted(methods)}")
    return name
  aligned = [(m["label_fraction"], m["mode"] == "full", -m["seed"], n) for n, m in methods.items()
             if m["init"] == "aligned"]
  if not aligned:
    raise ValueError(f"No aligned-ECG finetune method in this workdir; trained: {sorted(methods)}")
  return max(aligned)[-1]


class Screener:
  """Every model screening needs, loaded once; `predict(ecg, lead_mask)` and `generate(...)`."""

  def __init__(self, workdir, method=None, generate=True):
    with open(os.path.join(workdir, "finetune", "results.json")) as f:
      ft_results = json.load(f)
    self.method_name = choose_method(ft_results, method)
    info = ft_results["methods"][self.method_name]
    method_dir = os.path.join(workdir, "finetune", self.method_name)
    config, last_step = load_config(os.path.join(method_dir, "checkpoints"))
    self.config = config
    self.data_dir, self.meta = datasets.resolve(config, workdir)
    self.mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(shape=dict(data=-1, fsdp=1, tensor=1))),
                                   jax.devices()[:1])
    self.method = finetune.Method(config, info["init"], info["label_fraction"], info["seed"], workdir,
                                  self.data_dir, self.meta)
    self.variables, ft_step = self._finetuned(method_dir, info, last_step)
    self.thresholds = np.array([info["diseases"][n]["threshold"] for n in self.meta.label_names])
    self.references = self._reference_ranges()
    self.sources = {"finetune": dict(method=self.method_name, checkpoint=method_dir, step=ft_step)}
    predict = self.method.predictor()
    self._predict = jax.jit(lambda v, ecg, mask: predict(v, dict(ecg=ecg, lead_mask=mask)))
    self.generate_cines = generate
    if generate:
      self._load_generator(workdir)

  def _finetuned(self, method_dir, info, last_step):
    import orbax.checkpoint as ocp
    best = os.path.join(method_dir, "best")
    if os.path.isdir(best):
      return ocp.StandardCheckpointer().restore(os.path.abspath(best)), info["best_step"]
    abstract = lambda r: self.method._init_all(r)  # pylint: disable=protected-access
    params, step = common.restore_params(os.path.join(method_dir, "checkpoints"), ("params",), abstract,
                                         self.mesh)
    return params, step

  def _reference_ranges(self):
    """Central 95% of the training split's phenotypes: the cohort's own reference range."""
    values = [b["phenotypes"][:v] for b, v in pipeline.eval_batches(self.data_dir, "train",
                                                                    ("phenotypes",), 256)]
    values = np.concatenate(values)
    return np.nanpercentile(values, REFERENCE_PERCENTILES, axis=0).T

  def _load_generator(self, workdir):
    import orbax.checkpoint as ocp
    mar_config, _ = load_config(os.path.join(workdir, "mar", "checkpoints"))
    self.mar_config = mar_config
    gen_dir = os.path.abspath(mar_stage.generator_dir(workdir))
    if not os.path.isdir(gen_dir):
      raise FileNotFoundError(f"No generator in {gen_dir}: run the mar stage, or pass --no-generate")
    generator = ocp.StandardCheckpointer().restore(gen_dir)
    self.mar_params, self.mar_frozen = generator["params"], generator["frozen"]
    tcfg = mar_config.tokenize_config
    acfg, vcfg = tcfg.align_config, tcfg.vae_config
    align_dir = os.path.join(workdir, "align", "checkpoints")
    vae_dir = os.path.join(workdir, "vae", "checkpoints")
    align_model, _, align_task = align.make_task(acfg)
    align_params, align_step = common.restore_params(align_dir, ("params",), align_task.init_params,
                                                     self.mesh)
    vae = vae_stage.build_vae(vcfg)
    video = jnp.zeros((1,) + vae_stage.cmr_shape(vcfg), jnp.uint8)
    vae_params, vae_step = common.restore_params(
        vae_dir, ("params", "vae"), lambda r: vae.init({"params": r, "sample": r}, video)["params"],
        self.mesh)
    model = mar_stage.build_model(mar_config)
    generate = mar_stage.make_generate(mar_config, model, vae, tuple(mar_stage.latent_shape(mar_config)))
    self._embed = jax.jit(lambda ecg, mask: align.crop_averaged(align_model, align_params, ecg, mask,
                                                                acfg)[1])
    self._generate = lambda emb, rng: generate(self.mar_params, self.mar_frozen, vae_params, emb, rng,
                                               conditioned=True)
    self.sources.update(
        align=dict(checkpoint=align_dir, step=int(align_step)), vae=dict(checkpoint=vae_dir, step=int(vae_step)),
        mar=dict(checkpoint=gen_dir, step=int(ckpt_lib.latest_step(os.path.join(workdir, "mar",
                                                                               "checkpoints")))))

  def predict(self, ecg, lead_mask):
    phen_z, probs = self._predict(self.variables, jnp.asarray(ecg), jnp.asarray(lead_mask))
    phen = np.asarray(phen_z) * self.method.phen_std + self.method.phen_mean
    return phen, np.asarray(probs)

  def generate(self, ecg, lead_mask, seed):
    emb = self._embed(jnp.asarray(ecg), jnp.asarray(lead_mask))
    return np.asarray(self._generate(emb, jax.random.PRNGKey(seed)))


# ---- outputs -----------------------------------------------------------------------------------


CLINICAL_LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))


def _ecg_paper(ax, seconds, low, high):
  """Standard ECG paper: 0.04 s / 0.1 mV minor and 0.2 s / 0.5 mV major squares."""
  for step, width in ((0.04, 0.3), (0.2, 0.8)):
    for x in np.arange(0, seconds + 1e-9, step):
      ax.axvline(x, color="#f4b6b6", lw=width, zorder=0)
  for step, width in ((0.1, 0.3), (0.5, 0.8)):
    for y in np.arange(np.floor(low / step) * step, high + 1e-9, step):
      ax.axhline(y, color="#f4b6b6", lw=width, zorder=0)


def write_report(path, name, ecg, fs, result, cine=None, num_frames=5):
  """One page: the 12-lead ECG (3 x 4 at 25 mm/s, 10 mm/mV, a lead II rhythm strip), the
  phenotypes against the reference ranges, the disease probabilities, frames of the cine."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  leads = list(readers.STANDARD_LEADS)
  seconds = ecg.shape[1] / fs
  fig = plt.figure(figsize=(11, 12))
  grid = fig.add_gridspec(3, 2, height_ratios=[5.0, 3.2, 1.6], hspace=0.3, wspace=0.25,
                          left=0.1, right=0.97, top=0.94, bottom=0.03)
  ax = fig.add_subplot(grid[0, :])
  row_gap = 3.0
  segment = seconds / 4
  t = np.arange(ecg.shape[1]) / fs
  for r, row in enumerate(CLINICAL_LAYOUT):
    base = -r * row_gap
    for c, lead in enumerate(row):
      sl = (t >= c * segment) & (t < (c + 1) * segment)
      ax.plot(t[sl], ecg[leads.index(lead), sl] + base, color="k", lw=0.6)
      ax.text(c * segment + 0.05, base + 0.9, lead, fontsize=8)
  base = -3 * row_gap
  ax.plot(t, ecg[leads.index("II")] + base, color="k", lw=0.6)
  ax.text(0.05, base + 0.9, "II", fontsize=8)
  low, high = base - 1.5, 1.5
  _ecg_paper(ax, seconds, low, high)
  ax.set(xlim=(0, seconds), ylim=(low, high), xlabel="s (25 mm/s)", yticks=[])
  ax.set_aspect(0.4)  # 25 mm/s and 10 mm/mV: 0.2 s and 0.5 mV are both one 5 mm square
  checks = result["input"]
  ax.set_title(f"{name}: 12-lead ECG ({checks['fs_in']:g} Hz"
               f"{', resampled to 250 Hz' if checks['resampled'] else ''}; band-passed 0.67-40 Hz)",
               fontsize=10)

  ax = fig.add_subplot(grid[1, 0])
  phen = result["phenotypes"]
  names = list(phen)
  for i, n in enumerate(names):
    p = phen[n]
    lo, hi = p["reference_range"]
    span = max(hi - lo, 1e-9)
    x = (p["value"] - lo) / span
    ax.barh(i, 1.0, left=0.0, color="#d9ead3", height=0.6)
    ax.plot([x], [i], "o", color="#cc0000" if p["outside_reference_range"] else "#1f4e79")
    ax.text(1.6, i, f"{p['value']:.1f} {p['unit']}  ({lo:.0f}-{hi:.0f})", va="center", fontsize=7)
  ax.set(yticks=range(len(names)), xlim=(-0.6, 2.8), xticks=[0, 1])
  ax.set_yticklabels(names, fontsize=7)
  ax.set_xticklabels(["2.5th pct", "97.5th pct"], fontsize=7)
  ax.invert_yaxis()
  ax.set_title("Predicted phenotypes vs the cohort's reference range", fontsize=9)

  ax = fig.add_subplot(grid[1, 1])
  diseases = result["diseases"]
  for i, (n, d) in enumerate(diseases.items()):
    ax.barh(i, d["probability"], color="#cc0000" if d["positive"] else "#1f4e79", height=0.4)
    ax.plot([d["threshold"]] * 2, [i - 0.3, i + 0.3], "k--", lw=1)
    ax.text(0.0, i - 0.32, f"{n.replace('_', ' ')}: {d['probability']:.2f}"
            f"{' (above threshold)' if d['positive'] else ''}", fontsize=8)
  ax.set(yticks=[], xlim=(0, 1), ylim=(len(diseases) - 0.5, -0.7),
         xlabel="probability (dashed: decision threshold)")
  ax.set_title("Disease screening", fontsize=9)

  if cine is not None:
    frames = np.linspace(0, len(cine) - 1, num_frames).astype(int)
    sub = grid[2, :].subgridspec(1, num_frames, wspace=0.05)
    for c, f in enumerate(frames):
      a = fig.add_subplot(sub[0, c])
      a.imshow(cine[f], cmap="gray", vmin=-1, vmax=1)
      a.set_xticks([]), a.set_yticks([])
      a.set_title(f"synthetic cine, frame {f}", fontsize=7)
  fig.suptitle("CardioNets screening report (research use; not a diagnosis)", fontsize=11)
  fig.savefig(path, dpi=90)
  plt.close(fig)


def write_cine(out, name, cine):
  """NIfTI (x, y, t) as the project's reader reads it back, and a GIF."""
  import imageio.v2 as imageio
  import nibabel as nib
  frames = np.round((np.clip(cine, -1, 1) + 1) * 127.5).astype(np.uint8)
  nib.save(nib.Nifti1Image(np.transpose(frames, (2, 1, 0)), np.eye(4)), os.path.join(out, f"{name}.nii.gz"))
  imageio.mimsave(os.path.join(out, f"{name}.gif"), list(frames), duration=0.08, loop=0)


# ---- the command -------------------------------------------------------------------------------


def _prepare(record, allow_missing_leads):
  raw = readers.read_ecg(record.path, fs=record.fs)
  ecg, mask, info = preprocess.preprocess_ecg(
      raw, preprocess.EcgConfig(allow_missing_leads=allow_missing_leads))
  return ecg, mask, info


def _input_checks(info, predicted_from_present):
  keys = ("fs_in", "fs_out", "resampled", "leads_found", "leads_derived", "leads_missing",
          "n_samples_in", "n_cropped", "n_padded", "interpolated_runs", "min_lead_std_mv", "max_abs_mv")
  checks = {k: info[k] for k in keys if k in info}
  checks["predicted_from_present_leads"] = predicted_from_present
  return json.loads(json.dumps(checks, default=float))


def run(args):
  os.makedirs(args.out, exist_ok=True)
  records = find_records(args.ecg, args.fs)
  if not records:
    raise SystemExit(f"No ECG records found in {args.ecg}")
  screener = Screener(args.workdir, args.method, generate=not args.no_generate)
  meta = screener.meta
  rows, failures = [], 0
  prepared = []
  for r in records:
    try:
      prepared.append((r, *_prepare(r, args.allow_missing_leads)))
    except readers.RecordError as e:
      failures += 1
      rows.append(dict(record=r.name, path=r.path, status="failed", reason=e.reason, message=str(e)))
      print(f"FAILED {r.name}: {r.path}: {e.reason}: {e}", file=sys.stderr)
  batch_size = args.batch_size
  progress = metrics_lib.Progress(-(-len(prepared) // batch_size), batch_size)
  start = time.time()
  for b, first in enumerate(range(0, len(prepared), batch_size)):
    chunk = prepared[first:first + batch_size]
    pad = batch_size - len(chunk)
    ecg = np.stack([c[1] for c in chunk] + [chunk[-1][1]] * pad)
    mask = np.stack([c[2] for c in chunk] + [chunk[-1][2]] * pad)
    phen, probs = screener.predict(ecg, mask)
    cines = screener.generate(ecg, mask, args.seed + b) if screener.generate_cines else None
    for i, (r, x, m, info) in enumerate(chunk):
      missing = bool((m == 0).any())
      result = dict(
          record=r.name, path=r.path, input=_input_checks(info, missing),
          phenotypes={n: dict(value=float(phen[i, j]), unit=meta.phenotype_units[j],
                              reference_range=[float(v) for v in screener.references[j]],
                              outside_reference_range=bool(not screener.references[j][0] <= phen[i, j]
                                                           <= screener.references[j][1]))
                      for j, n in enumerate(meta.phenotype_names)},
          diseases={n: dict(probability=float(probs[i, j]), threshold=float(screener.thresholds[j]),
                            positive=bool(probs[i, j] >= screener.thresholds[j]))
                    for j, n in enumerate(meta.label_names)},
          models=screener.sources)
      if cines is not None:
        write_cine(args.out, r.name, cines[i])
        result["cine"] = dict(nifti=f"{r.name}.nii.gz", gif=f"{r.name}.gif",
                              shape=list(cines[i].shape), seed=args.seed + b)
      with open(os.path.join(args.out, f"{r.name}.json"), "w") as f:
        json.dump(result, f, indent=2)
      write_report(os.path.join(args.out, f"{r.name}.png"), r.name, x, preprocess.TARGET_FS, result,
                   None if cines is None else cines[i])
      rows.append(dict(record=r.name, path=r.path, status="ok", reason="", message=(
          "predicted from the leads present" if missing else ""),
                       **{f"{n}_{u}".replace("%", "pct"): f"{result['phenotypes'][n]['value']:.4g}"
                          for n, u in zip(meta.phenotype_names, meta.phenotype_units)},
                       **{f"p_{n}": f"{result['diseases'][n]['probability']:.4f}" for n in meta.label_names}))
    line = progress.update(b + 1)
    if line:
      metrics_lib.log("screening batch %s", line.replace("step", "batch"))
  order = {r.name: i for i, r in enumerate(records)}
  rows.sort(key=lambda row: order[row["record"]])
  columns = list(dict.fromkeys(k for row in rows for k in ("record", "path", "status", "reason", "message")))
  columns += [k for k in dict.fromkeys(k for row in rows for k in row) if k not in columns]
  with open(os.path.join(args.out, "summary.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(rows)
  ok = len(records) - failures
  metrics_lib.log("Screened %d record(s) in %.1fs: %d ok, %d failed; wrote %s", len(records),
                  time.time() - start, ok, failures, os.path.join(args.out, "summary.csv"))
  return 1 if failures else 0


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m cardionets_jax.predict", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="workdir where finetune (and mar) ran")
  parser.add_argument("--ecg", required=True, nargs="+", help="records, directories or manifest CSVs")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--fs", type=float, default=None, help="sampling rate of .npy/.csv records")
  parser.add_argument("--no-generate", action="store_true", help="skip the synthetic cine")
  parser.add_argument("--allow-missing-leads", action="store_true",
                      help="predict from the leads present (the encoder masks absent ones)")
  parser.add_argument("--method", default=None, help="finetune method (default: aligned, most labels)")
  parser.add_argument("--batch-size", type=int, default=16, help="records per compiled batch")
  parser.add_argument("--seed", type=int, default=0, help="sampling seed of the cines")
  parser.add_argument("more_ecg", nargs="*", metavar="PATH", help="more records (--ecg=A B C)")
  args = parser.parse_args(argv)
  args.ecg = args.ecg + args.more_ecg
  return args


def main(argv=None):
  from absl import flags
  flags.FLAGS.mark_as_parsed()  # absl-flag readers (Grain) get defaults; the CLI is argparse
  metrics_lib.quiet_libraries()
  sys.exit(run(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
  main()
