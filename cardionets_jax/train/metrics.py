"""Metrics to `metrics.jsonl` and TensorBoard, and progress lines. Process 0 writes."""

import json
import logging
import math
import os
import time

import jax


class MetricWriter:
  """Appends {"step", "split", name: value} lines and TensorBoard scalars."""

  def __init__(self, stage_dir):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(stage_dir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      os.makedirs(stage_dir, exist_ok=True)
      from tensorboardX import SummaryWriter  # event files without TensorFlow
      self._tb = SummaryWriter(os.path.join(stage_dir, "tensorboard"))

  def write(self, step, metrics, split="train"):
    if not self.enabled:
      return
    values = {k: float(v) for k, v in metrics.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps(dict(step=int(step), split=split, **values)) + "\n")
    for k, v in values.items():
      self._tb.add_scalar(f"{split}/{k}", v, int(step))
    self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_metrics(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class Progress:
  """Steps/s, samples/s and ETA; the first measured interval (compilation) is
  reported apart and kept out of the rates."""

  def __init__(self, total_steps, batch_size, first_step=0):
    self.total, self.batch = total_steps, batch_size
    self.first_step = first_step
    self._mark_step, self._mark_time = first_step, time.time()
    self._compiled = False
    self.steps_per_s = math.nan

  def update(self, step):
    now = time.time()
    done, elapsed = step - self._mark_step, now - self._mark_time
    self._mark_step, self._mark_time = step, now
    if not self._compiled:
      self._compiled = True
      return f"step {step}/{self.total}: first {done} step(s) incl. compilation took {elapsed:.1f}s"
    if done <= 0 or elapsed <= 0:
      return None
    self.steps_per_s = done / elapsed
    eta = (self.total - step) / self.steps_per_s
    return (f"step {step}/{self.total}: {self.steps_per_s:.2f} steps/s, "
            f"{self.steps_per_s * self.batch:.1f} samples/s, ETA {_fmt(eta)}")


def _fmt(seconds):
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def log(message, *args):
  if jax.process_index() == 0:
    logging.info(message, *args)


class _QuietLibraries(logging.Filter):
  """Keeps INFO lines from our code; libraries (Orbax is chatty) speak at WARNING+."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or "cardionets_jax" in record.pathname


def quiet_libraries():
  """Installs the absl handler (if an entry point has not) with the filter above."""
  from absl import logging as absl_logging
  absl_logging.use_absl_handler()
  absl_logging.set_verbosity(absl_logging.INFO)
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    handler.addFilter(_QuietLibraries())
