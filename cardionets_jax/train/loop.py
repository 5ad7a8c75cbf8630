"""The generic training loop every stage runs.

A stage describes its work as a `Task` (how to init params, the loss, the
batch fields it needs); `fit` does the rest: mesh, sharded init, input
pipeline, resume, the jitted step, metrics, progress, checkpoints and the
NaN guard.
"""

import dataclasses
import logging
import os
from typing import Callable, Optional

import jax
import numpy as np

from cardionets_jax.data import pipeline
from cardionets_jax.train import checkpoint as ckpt_lib
from cardionets_jax.train import mesh as mesh_lib
from cardionets_jax.train import program as program_lib
from cardionets_jax.train import metrics as metrics_lib
from cardionets_jax.train import state as state_lib


@dataclasses.dataclass
class Task:
  init_params: Callable                  # rng -> params boxed with logical axes
  loss_fn: Callable                      # (params, frozen, batch, rng, step) -> (loss, scalar metrics)
  spec: dict                             # field the loss reads -> (shape of one example, dtype)
  init_frozen: Optional[Callable] = None  # () -> boxed frozen tree (shapes and shardings)
  # Upstream weights: (abstract tree with shardings, mesh, rules) -> {top-level key: values}; the
  # keys returned replace those of the freshly initialised frozen tree / params.
  load_frozen: Optional[Callable] = None
  load_params: Optional[Callable] = None
  lr_scales: Optional[Callable] = None    # params -> tree of per-leaf LR factors (layer decay)
  # {top-level params key: dict(lr_scale=, b1=, b2=)}: those params get an AdamW of their own.
  optimizer_groups: Optional[dict] = None
  subset: tuple = (1.0, 0)                # (fraction, seed) of training subjects used

  @property
  def fields(self):
    return tuple(self.spec)


@dataclasses.dataclass
class EarlyStopping:
  """Validation-driven stopping: higher `score` is better; `patience` evaluations without a
  better one stop the run. Its history is saved in every checkpoint, atomic with the state."""
  score: Callable                          # (state, step) -> float
  patience: int

  @staticmethod
  def update(progress, step, score, patience):
    """The progress after an evaluation at `step` (a new dict; JSON-serialisable)."""
    best = progress.get("best_score")
    improved = best is None or score > best
    out = dict(progress, last_step=int(step), last_score=float(score))
    if improved:
      out.update(best_score=float(score), best_step=int(step), stale=0)
    else:
      out["stale"] = int(progress.get("stale", 0)) + 1
    out["stopped"] = out["stale"] >= patience
    return out


class Trainer:
  """Everything built around a task; `fit` runs it, stages reuse the rest.

  `workdir`, `stage` (and `run`, for one finetune method) say where it writes; `mesh` may be given
  (tests run stages in process on one device), else it is `config.mesh` over every device.
  """

  def __init__(self, config, workdir, stage, data_dir, task, run=None, mesh=None):
    self.config, self.workdir, self.stage, self.run = config, workdir, stage, run
    self.data_dir, self.task = data_dir, task
    self.stage_dir = workdir.stage_dir(stage, run)
    self.checkpoint_dir = workdir.checkpoints(stage, run)
    self.converted = self._converted_checkpoint()   # checked before anything compiles
    self.program = program_lib.build(config, task, mesh)
    self.mesh, self.rules = self.program.mesh, self.program.rules
    self.shardings = self.program.shardings
    self.abstract_params = self.program.abstract_params
    self.progress = {}
    metrics_lib.log("Devices: %d x %s over %d process(es); mesh %s", self.mesh.devices.size,
                    jax.devices()[0].device_kind, jax.process_count(), dict(self.mesh.shape))
    self.state = self.program.init_state(config.seed)
    if self.task.load_frozen is not None:
      abstract = ckpt_lib.abstract_with_shardings(self.state.frozen, self.shardings.frozen)
      loaded = self.task.load_frozen(abstract, self.mesh, self.rules)
      self.state = self.state.replace(frozen={**self.state.frozen, **loaded})
    if self.task.load_params is not None:
      abstract = ckpt_lib.abstract_with_shardings(self.state.params, self.shardings.params)
      loaded = self.task.load_params(abstract, self.mesh, self.rules)
      self.state = self.state.replace(params={**self.state.params, **loaded})
    for line in state_lib.param_table(self.abstract_params):
      metrics_lib.log("params  %s", line)

  def restore_step(self, step):
    """The train state saved at `step` (the best checkpoint, say), in this program's shardings."""
    ckpt = ckpt_lib.Checkpointer(self.checkpoint_dir, keep=self.config.train.keep_checkpoints)
    try:
      state, _ = ckpt.restore(step, ckpt_lib.abstract_with_shardings(self.state, self.shardings))
    finally:
      ckpt.close()
    return state

  def _data_iterator(self):
    cfg, tcfg = self.config, self.config.train
    return pipeline.train_iterator(
        self.data_dir, "train", self.task.fields + ("subject_id",), tcfg.batch_size,
        seed=cfg.data.shuffle_seed + cfg.seed, worker_count=cfg.data.worker_count,
        worker_buffer_size=cfg.data.worker_buffer_size, read_threads=cfg.data.read_threads,
        subset=self.task.subset)

  def _resume(self, ckpt, data_iter):
    if self.converted:
      self._start_from_converted(self.converted)
      return
    abstract = ckpt_lib.abstract_with_shardings(self.state, self.shardings)
    state, progress, step = ckpt.restore_latest(
        abstract, data_iter, self.workdir.quarantine(self.stage, self.run))
    if step is not None:
      self.state, self.progress = state, progress
      metrics_lib.log("Resumed from %s/%d", self.checkpoint_dir, step)
      changes = ckpt_lib.config_changes(ckpt_lib.saved_config(f"{self.checkpoint_dir}/{step}"),
                                        self.config)
      if changes:
        logging.warning("Resuming %s/%d with a config that differs from the one it was saved "
                        "with in %d field(s): %s", self.checkpoint_dir, step, len(changes),
                        "; ".join(changes))

  def _converted_checkpoint(self):
    """The latest checkpoint when `convert` wrote it (params only, no optimizer or data state),
    else None; a ValueError naming the fields when its model is not this run's."""
    latest = ckpt_lib.latest_step(self.checkpoint_dir)
    if latest is None:
      return None
    reference = f"{self.checkpoint_dir}/{latest}"
    saved = ckpt_lib.saved_config(reference)
    if "converted_from" not in saved:
      return None
    changes = [f"model.{c}" for c in ckpt_lib.config_changes(saved.model, self.config.model)]
    if changes:
      raise ValueError(
          f"{reference} holds weights converted from {saved.converted_from.file}, whose model "
          f"differs from this run's config.model in {len(changes)} field(s): {'; '.join(changes)}."
          f" Run at the sizes it was converted at (configs/{self.stage}.py:variant="
          f"{saved.variant}) or override those fields")
    return reference

  def _start_from_converted(self, reference):
    """Training starts from converted weights at step 0 with a fresh optimizer state;
    `train.num_steps=0` evaluates them as they are."""
    abstract = ckpt_lib.abstract_with_shardings(self.state.params, self.shardings.params)
    params, _ = ckpt_lib.restore_subtree(reference, ("params",), abstract)
    self.state = self.program.restart_from(self.state, params)
    metrics_lib.log("Starting from the weights converted from %s (%s): step 0, a fresh optimizer "
                    "state; train.num_steps=%d", ckpt_lib.saved_config(reference).converted_from.file,
                    reference, self.config.train.num_steps)

  def fit(self, on_eval: Optional[Callable] = None, early_stopping: Optional[EarlyStopping] = None,
          start: Optional[Callable] = None):
    """Trains to config.train.num_steps, resuming from the latest checkpoint.

    `on_eval(state, step, writer)` runs every train.eval_every steps. With `early_stopping` each
    evaluation's score is checkpointed (the best step is kept) and training ends after `patience`
    evaluations without a better one; a rerun of a stopped or finished run trains nothing.
    `start(state) -> state` runs once, on a run that starts at step 0 (never on a resume): a
    closed-form initialisation, which early stopping then scores as step 0.
    """
    tcfg = self.config.train
    data_iter = self._data_iterator()
    ckpt = ckpt_lib.Checkpointer(self.checkpoint_dir, keep=tcfg.keep_checkpoints)
    self._resume(ckpt, data_iter)
    step = int(self.state.step)
    writer = metrics_lib.MetricWriter(self.stage_dir)
    log = _MetricLog(writer, metrics_lib.Progress(tcfg.num_steps, tcfg.batch_size, first_step=step),
                     ckpt, self.checkpoint_dir)
    if start is not None and step == 0 and "last_step" not in self.progress:
      self.state = start(self.state)
      score = self._evaluate(0, None, early_stopping, writer)
      ckpt.save(0, self.state, data_iter, self.config, self.progress, score)
    if step >= tcfg.num_steps or self.progress.get("stopped"):
      metrics_lib.log("Training already finished (step %d%s)", step,
                      ", early-stopped" if self.progress.get("stopped") else "")
    try:
      with mesh_lib.active(self.mesh, self.rules):
        while step < tcfg.num_steps and not self.progress.get("stopped"):
          batch = next(data_iter)
          ids = batch.pop("subject_id")
          self.state, metrics = self.program.step(
              self.state, mesh_lib.global_batch(batch, self.mesh, self.rules))
          step += 1
          log.pending.append((step, metrics, ids))
          if step % tcfg.log_every == 0 or step == tcfg.num_steps or step == 1:
            log.flush()
          score = self._evaluate(step, on_eval, early_stopping, writer)
          if step % tcfg.checkpoint_every == 0 or step == tcfg.num_steps or score is not None:
            log.flush()  # never checkpoint past a NaN
            ckpt.save(step, self.state, data_iter, self.config, self.progress, score)
      if self.progress.get("stopped") and step < tcfg.num_steps:
        metrics_lib.log("Early stop at step %d: no better validation score in the last %d "
                        "evaluations (best: step %d)", step, early_stopping.patience,
                        self.progress["best_step"])
    finally:
      ckpt.wait()
      ckpt.close()
      writer.close()
    return self.state

  def _evaluate(self, step, on_eval, early_stopping, writer):
    """Runs the evaluations due at `step`; returns the early-stopping score, if one was taken."""
    every = self.config.train.eval_every
    if not every or step % every:
      return None
    if on_eval is not None:
      on_eval(self.state, step, writer)
    if early_stopping is None:
      return None
    score = early_stopping.score(self.state, step)
    writer.write(step, {"score": score}, split="val")
    self.progress = EarlyStopping.update(self.progress, step, score, early_stopping.patience)
    return score


class _MetricLog:
  """Pending step metrics, fetched in bulk (to keep the device busy), checked and logged."""

  def __init__(self, writer, progress, ckpt, checkpoint_dir):
    self.writer, self.progress, self.ckpt, self.checkpoint_dir = writer, progress, ckpt, checkpoint_dir
    self.pending = []  # (step, device metrics, subject ids)

  def flush(self):
    """Fetches pending metrics, stops on a non-finite loss, logs the mean."""
    if not self.pending:
      return
    fetched = jax.device_get([m for _, m, _ in self.pending])
    for (s, _, ids), m in zip(self.pending, fetched):
      if not np.isfinite(m["loss"]):
        last = self.ckpt.latest_step()
        raise FloatingPointError(
            f"Non-finite loss ({m['loss']}) at step {s} on a batch with subjects "
            f"{[i.decode() for i in ids[:8]]}{' ...' if len(ids) > 8 else ''}; last good "
            f"checkpoint: {os.path.join(self.checkpoint_dir, str(last)) if last is not None else 'none'}")
    mean = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    self.writer.write(self.pending[-1][0], mean)
    line = self.progress.update(self.pending[-1][0])
    if line:
      metrics_lib.log("%s  loss %.4f", line, mean["loss"])
    self.pending.clear()
