"""The generic training loop every stage runs.

A stage describes its work as a `Task` (how to init params, the loss, the
batch fields it needs); `fit` does the rest: mesh, sharded init, input
pipeline, resume, the jitted step, metrics, progress, checkpoints and the
NaN guard.
"""

import dataclasses
import os
from typing import Any, Callable, Optional

import jax
import numpy as np

from cardionets_jax.data import pipeline
from cardionets_jax.train import checkpoint as ckpt_lib
from cardionets_jax.train import mesh as mesh_lib
from cardionets_jax.train import metrics as metrics_lib
from cardionets_jax.train import state as state_lib
from cardionets_jax.train import step as step_lib


@dataclasses.dataclass
class Task:
  init_params: Callable                  # rng -> params boxed with logical axes
  loss_fn: Callable                      # (params, frozen, batch, rng) -> (loss, scalar metrics)
  fields: tuple                          # dataset fields the loss reads
  init_frozen: Optional[Callable] = None  # () -> boxed frozen tree (shapes and shardings)
  # Upstream weights: (abstract tree with shardings, mesh, rules) -> {top-level key: values}; the
  # keys returned replace those of the freshly initialised frozen tree / params.
  load_frozen: Optional[Callable] = None
  load_params: Optional[Callable] = None
  lr_scales: Optional[Callable] = None    # params -> tree of per-leaf LR factors (layer decay)
  subset: tuple = (1.0, 0)                # (fraction, seed) of training subjects used


@dataclasses.dataclass
class Trainer:
  """Everything built around a task; `fit` runs it, stages reuse the rest."""
  config: Any
  stage_dir: str
  data_dir: str
  task: Task
  mesh: Any = None
  rules: Any = None
  tx: Any = None
  schedule: Any = None
  state: Any = None
  shardings: Any = None
  abstract_params: Any = None

  def __post_init__(self):
    cfg = self.config
    self.mesh = mesh_lib.make_mesh(cfg.mesh)
    self.rules = mesh_lib.axis_rules(cfg.mesh)
    self.tx, self.schedule = state_lib.make_optimizer(cfg.train, self.task.lr_scales)
    metrics_lib.log("Devices: %d x %s over %d process(es); mesh %s", jax.device_count(),
                    jax.devices()[0].device_kind, jax.process_count(), dict(self.mesh.shape))
    self.state, self.shardings, self.abstract_params = state_lib.create_state(
        self.task.init_params, self.tx, cfg.seed, self.mesh, self.rules, self.task.init_frozen)
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

  @property
  def checkpoint_dir(self):
    return os.path.join(self.stage_dir, "checkpoints")

  def fit(self, on_eval: Optional[Callable] = None):
    """Trains to config.train.num_steps, resuming from the latest checkpoint.

    `on_eval(state, step, writer)` runs every train.eval_every steps; when it
    returns True (early stopping) training ends there, with a checkpoint.
    """
    cfg, tcfg = self.config, self.config.train
    fields = tuple(self.task.fields) + ("subject_id",)
    data_iter = pipeline.train_iterator(
        self.data_dir, "train", fields, tcfg.batch_size, seed=cfg.data.shuffle_seed + cfg.seed,
        worker_count=cfg.data.worker_count, worker_buffer_size=cfg.data.worker_buffer_size,
        read_threads=cfg.data.read_threads, subset=self.task.subset)
    ckpt = ckpt_lib.Checkpointer(self.checkpoint_dir, keep=tcfg.keep_checkpoints)
    latest = ckpt.latest_step()
    if latest is not None:
      abstract = ckpt_lib.abstract_with_shardings(self.state, self.shardings)
      self.state = ckpt.restore(latest, abstract, data_iter)
      metrics_lib.log("Resumed from %s/%d", self.checkpoint_dir, latest)
    step = int(self.state.step)

    writer = metrics_lib.MetricWriter(self.stage_dir)
    step_fn = step_lib.make_train_step(self.task.loss_fn, self.tx, self.schedule,
                                       tcfg.grad_accum_steps)
    train_step = None  # jitted once the first batch shows the field ranks
    progress = metrics_lib.Progress(tcfg.num_steps, tcfg.batch_size, first_step=step)
    pending = []  # (step, device metrics, subject ids): fetched in bulk to keep the device busy

    def flush():
      """Fetches pending metrics, stops on a non-finite loss, logs the mean."""
      if not pending:
        return
      fetched = jax.device_get([m for _, m, _ in pending])
      for (s, _, ids), m in zip(pending, fetched):
        if not np.isfinite(m["loss"]):
          last = ckpt.latest_step()
          raise FloatingPointError(
              f"Non-finite loss ({m['loss']}) at step {s} on a batch with subjects "
              f"{[i.decode() for i in ids[:8]]}{' ...' if len(ids) > 8 else ''}; last good "
              f"checkpoint: {os.path.join(self.checkpoint_dir, str(last)) if last is not None else 'none'}")
      mean = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
      writer.write(pending[-1][0], mean)
      line = progress.update(pending[-1][0])
      if line:
        metrics_lib.log("%s  loss %.4f", line, mean["loss"])
      pending.clear()

    if step >= tcfg.num_steps:
      metrics_lib.log("Training already finished (%d steps)", step)
    try:
      with mesh_lib.active(self.mesh, self.rules):
        while step < tcfg.num_steps:
          batch = next(data_iter)
          ids = batch.pop("subject_id")
          if train_step is None:
            train_step = step_lib.jit_train_step(step_fn, self.shardings, self.mesh, self.rules,
                                                 {k: v.ndim for k, v in batch.items()})
          self.state, metrics = train_step(self.state,
                                           mesh_lib.global_batch(batch, self.mesh, self.rules))
          step += 1
          pending.append((step, metrics, ids))
          if step % tcfg.log_every == 0 or step == tcfg.num_steps or step == 1:
            flush()
          stop = (on_eval is not None and tcfg.eval_every and step % tcfg.eval_every == 0
                  and on_eval(self.state, step, writer))
          if step % tcfg.checkpoint_every == 0 or step == tcfg.num_steps or stop:
            flush()  # never checkpoint past a NaN
            ckpt.save(step, self.state, data_iter, cfg)
          if stop:
            if step < tcfg.num_steps:
              metrics_lib.log("Early stop at step %d: no better validation score in the last "
                              "evaluations", step)
            break
    finally:
      ckpt.wait()
      ckpt.close()
      writer.close()
    return self.state
