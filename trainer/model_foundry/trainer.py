"""Train the GPT on the corpus, tracked with foundry_track.

    trainer = Trainer(ExperimentConfig(**yaml.safe_load(open("configs/quickstart.yaml"))))
    trainer.train()

Everything is built in ``__init__`` (logs, tracker run, data, model,
optimiser, and the checkpoint to resume from); ``train`` is one loop that
reads top to bottom. The loop calls the tracker in one line (``_log_step``:
train, validation and system metrics on the ``logging:`` block's schedule);
``run.log`` only queues the values (a loss tensor is read later, on another
thread), so tracking costs the step microseconds and never a GPU sync.

Under ``torchrun --nproc_per_node=N -m model_foundry.cli train CONFIG``
(``WORLD_SIZE`` > 1) the trainer joins a process group (NCCL on CUDA, gloo on
the CPU) before the tracker starts, so foundry_track gives every rank rank 0's
run id and directory; the model is wrapped in DistributedDataParallel and each
rank draws its own batches (the batch generator is seeded with ``seed +
rank``). Rank 0 alone owns the tracker run, the checkpoints and the progress
bar; the other ranks write their own log file (``<experiment>-rank<N>``).
Every cross-rank operation (the metric reduction, the stop check, the
checkpoint's RNG gather) happens at the same steps on every rank, so no rank
waits on a collective the others skip. The metrics logged are the mean over
ranks (``train/tokens_per_sec`` is the job's total); with the log file at
DEBUG each rank also records its own ``local_loss`` at every logged step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import foundry_track
from foundry_track import TrackingConfig
from foundry_track.distributed import reduce_metrics
from foundry_track.events import Status
from model_foundry.config import ConfigError, ExperimentConfig, run_params
from model_foundry.data import ByteDataset, decode, encode
from model_foundry.logging_components import (
    set_console_hook,
    setup_logging,
    start_run,
    system_metrics,
    wandb_requested,
)
from model_foundry.model import GPT
from model_foundry.progress import Progress

__all__ = ["Trainer", "load_checkpoint"]

log = logging.getLogger("model_foundry")
CHECKPOINT_DIR = "checkpoints"


@dataclass
class _LogState:
    """What the tracking block carries from one logged step to the next; the summary reads it at the end."""

    window_start: float  # perf_counter() at the last logged step: tokens/s and perf/* cover the steps since
    window_start_step: int
    data_time: float = 0.0  # seconds spent fetching batches in the window
    first_loss: torch.Tensor | None = None  # the loss of this run's first step and of its last one
    last_loss: torch.Tensor | None = None  # (kept as tensors: read once, at the end)
    val: dict[str, float] = field(default_factory=dict)


class Trainer:
    def __init__(self, config: ExperimentConfig, base_dir: str | os.PathLike[str] = ".", progress: bool = True) -> None:
        self.config = config
        self.base_dir = Path(base_dir).resolve()
        self.show_progress = progress
        training = config.training
        # A checkpoint to resume from also says which tracker run to continue.
        checkpoint = load_checkpoint(self._path(training.resume_from)) if training.resume_from else None
        self.device = self._pick_device(training.device)
        # Before the tracker starts: foundry_track broadcasts rank 0's run id and directory.
        self.rank, self.world_size, self.owns_process_group = self._join_process_group()
        try:
            self.log_file = self._setup_logging()
            self.data = ByteDataset(config.data, config.model.context_length, self.base_dir, training.seed + self.rank)
            # Backend options are validated here, before a model exists.
            self.run = self._start_tracking(checkpoint)
        except BaseException:
            self._leave_process_group()
            raise
        try:
            self._build(checkpoint)
        except BaseException:
            self.run.finish("failed")
            self._leave_process_group()
            raise
        if config.logging.watch_model:
            # Histograms of weights and gradients (the guide's watch_model), for every backend.
            self.run.watch(self.model, log="all", log_freq=config.logging.watch_log_freq)
        self.checkpoint_dir = (self.run.dir if self.run.dir is not None else self._path("output") / config.experiment_name) / CHECKPOINT_DIR
        self.last_checkpoint: Path | None = None
        self.saved_step = self.step  # a resumed run's checkpoint already exists
        log.info(
            "%s: %.2fM parameters, %s bytes of text (%d sentences removed), device %s, tracking %s",
            config.experiment_name, self.model.num_parameters() / 1e6, f"{self.data.num_bytes:,}",
            self.data.removed_sentences, self.device, self.run.dir or "disabled",
        )

    def _build(self, checkpoint: dict[str, Any] | None) -> None:
        """Model, optimiser, schedule and AMP; then the checkpoint's state, or the new run's hyperparameters."""
        config, training = self.config, self.config.training
        torch.manual_seed(training.seed)
        random.seed(training.seed)
        if training.num_threads:
            torch.set_num_threads(training.num_threads)
        self.model = GPT(config.model).to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.optimizer_groups(training.weight_decay), lr=training.lr, betas=training.betas,
            fused=self.device.type == "cuda",
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        # bf16 needs no loss scaling; fp16 (older GPUs) does.
        amp = training.use_amp and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
        self.autocast: contextlib.AbstractContextManager[Any] = (
            torch.autocast("cuda", dtype=self.amp_dtype) if amp else contextlib.nullcontext())
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp and self.amp_dtype == torch.float16)
        if training.use_amp and not amp:
            log.info("training.use_amp applies to CUDA only; training in float32 on %s", self.device)

        self.step = 0
        self.stop_requested = False
        if checkpoint is not None:
            self._restore(checkpoint)
        # Forward and backward go through the DDP wrapper (it all-reduces the
        # gradients); checkpoints, evaluation and sampling use the plain model.
        # DDP copies rank 0's weights to every rank here, restored ones included.
        self.ddp_model: nn.Module = self.model if self.world_size == 1 else DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if checkpoint is None:
            # Hyperparameters once per run (a resumed run keeps the ones it started with).
            self.run.log_params(run_params(config, self.run.config, {
                "model": {"num_parameters": self.model.num_parameters()},
                "data": {"train_bytes": len(self.data.train), "val_bytes": len(self.data.val),
                         "removed_sentences": self.data.removed_sentences},
            }))

    @property
    def tokens_per_step(self) -> int:
        """Tokens one optimiser step trains on, counting every rank's batch."""
        return self.config.training.batch_size * self.config.model.context_length * self.world_size

    # ------------------------------------------------------------------ #
    # The training loop
    # ------------------------------------------------------------------ #

    def train(self) -> dict[str, Any]:
        """Train until ``training.steps``; returns a summary (losses, throughput, paths)."""
        training = self.config.training
        model, optimizer = self.ddp_model, self.optimizer
        checkpoint_every = training.checkpoint_every_n_steps
        start_step = self.step
        progress = Progress(training.steps, start=start_step, enabled=self.show_progress and self.rank == 0)
        set_console_hook(progress.clear)
        restore_signals = self._catch_stop_signals()
        log.info("training steps %d..%d, %d tokens per step", start_step + 1, training.steps, self.tokens_per_step)

        started = time.perf_counter()
        log_state = _LogState(window_start=started, window_start_step=start_step)
        status: Status = "failed"
        consistent, stopped = True, False
        try:
            model.train()
            for step in range(start_step + 1, training.steps + 1):
                fetch_start = time.perf_counter()
                inputs, targets = self.data.batch("train", training.batch_size, self.device)
                log_state.data_time += time.perf_counter() - fetch_start

                with self.autocast:
                    _, loss = model(inputs, targets)
                if log_state.first_loss is None:
                    log_state.first_loss = loss.detach()
                log_state.last_loss = loss.detach()
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                grad_norm = nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip or math.inf)
                self.scaler.step(optimizer)
                self.scaler.update()
                optimizer.zero_grad(set_to_none=True)
                lr = optimizer.param_groups[0]["lr"]
                self.scheduler.step()
                self.step = step

                # The tracker: train/*, val/* and system/* on the logging block's schedule.
                self._log_step(step, loss, lr, grad_norm, log_state, progress)
                if checkpoint_every and step % checkpoint_every == 0 and step < training.steps:
                    self.save_checkpoint()
                progress.update(step)
                stopped = self._stop_now(step)  # after Ctrl-C or SIGTERM: stop cleanly, with a checkpoint
                if stopped:
                    break
            self._job_losses(log_state)
            status = "killed" if stopped else "success"
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once; a half-done step is not saved
            status, consistent = "killed", False
            raise
        finally:
            elapsed = time.perf_counter() - started
            progress.close()
            set_console_hook(None)
            restore_signals()
            self._finish_run(status, consistent)
        return self._summary(self.step - start_step, elapsed, log_state, interrupted=status == "killed")

    def _log_step(self, step: int, loss: torch.Tensor, lr: float, grad_norm: torch.Tensor,
                  log_state: _LogState, progress: Progress) -> None:
        """The tracker's part of a training step, on the ``logging:`` block's schedule.

        ``train/*`` (and ``perf/*``) every ``log_metrics_every_n_steps`` and
        ``val/*`` every ``log_detailed_metrics_every_n_steps``, both also at
        the last step (so a run shorter than the interval still has them);
        ``system/*`` every ``log_memory_every_n_steps``. Under torchrun
        every rank calls it at every step: the metric reduction and the
        evaluation are collectives, so all ranks reach them together.
        """
        logging_config = self.config.logging
        if step % logging_config.log_metrics_every_n_steps == 0 or step == self.config.training.steps:
            self._log_train_metrics(step, loss, lr, grad_norm, log_state, progress)
        if step % logging_config.log_detailed_metrics_every_n_steps == 0 or step == self.config.training.steps:
            log_state.val = self.evaluate()
            self.run.log(log_state.val, step=step)
            log.info("step %d: val loss %.4f", step, log_state.val["val/loss"], extra={"step": step, **log_state.val})
        if step % logging_config.log_memory_every_n_steps == 0:
            self.run.log(system_metrics(self.device), step=step)

    def _log_train_metrics(self, step: int, loss: torch.Tensor, lr: float, grad_norm: torch.Tensor,
                           log_state: _LogState, progress: Progress) -> None:
        """``train/*`` (and ``perf/*``) over the steps since the last logged one.

        Tensors are handed over as they are: no ``.item()``, no GPU sync.
        """
        now = time.perf_counter()
        window_seconds, window_steps = now - log_state.window_start, step - log_state.window_start_step
        tokens_per_sec = window_steps * self.tokens_per_step / window_seconds
        step_loss = loss.detach()
        metrics: dict[str, Any] = {
            "train/loss": step_loss, "train/lr": lr,
            "train/grad_norm": grad_norm, "train/tokens_per_sec": tokens_per_sec,
        }
        if self.config.logging.profile_performance:
            metrics.update(self._perf_metrics(window_seconds, log_state.data_time, window_steps))
        if self.world_size > 1:
            self._log_local_loss(step, step_loss)
            # A collective: every rank gets here at the same step with the same keys.
            # Mean over ranks: the loss of the job's whole batch; lr and grad_norm
            # (gradients already all-reduced by DDP) are equal on every rank, and
            # tokens_per_sec is already the job's total (it counts every rank's tokens).
            metrics = reduce_metrics(metrics, "mean")
            step_loss = metrics["train/loss"]
        # exp of the mean loss, not the mean of the ranks' perplexities.
        metrics["train/perplexity"] = step_loss.exp()
        self.run.log(metrics, step=step)  # a no-op on ranks other than 0
        progress.update(step, step_loss, tokens_per_sec)
        log_state.window_start, log_state.window_start_step, log_state.data_time = now, step, 0.0

    def _job_losses(self, log_state: _LogState) -> None:
        """Under torchrun, the first and last step's losses become the mean over ranks
        (a collective: every rank leaves the loop at the same step and calls it)."""
        if self.world_size > 1 and log_state.first_loss is not None and log_state.last_loss is not None:
            ends = reduce_metrics({"first": log_state.first_loss, "last": log_state.last_loss}, "mean")
            log_state.first_loss, log_state.last_loss = ends["first"], ends["last"]

    def _stop_now(self, step: int) -> bool:
        """Ctrl-C or SIGTERM: stop cleanly after this step (under torchrun: at the
        next logged step, all ranks together; see :meth:`_stop_agreed`)."""
        if self.world_size > 1:
            return step % self.config.logging.log_metrics_every_n_steps == 0 and self._stop_agreed()
        return self.stop_requested

    def _summary(self, steps: int, elapsed: float, log_state: _LogState, interrupted: bool) -> dict[str, Any]:
        """What :meth:`train` returns (and logs as its last line)."""
        summary = {
            "steps": steps,
            "steps_per_sec": steps / elapsed if elapsed else 0.0,
            "tokens_per_sec": steps * self.tokens_per_step / elapsed if elapsed else 0.0,
            # The loss of the first step trained and of the last one (not of logged steps only).
            "first_loss": float(log_state.first_loss) if log_state.first_loss is not None else None,
            "final_loss": float(log_state.last_loss) if log_state.last_loss is not None else None,
            "val_loss": log_state.val.get("val/loss"),
            "run_dir": str(self.run.dir) if self.run.dir else None,
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "log_file": str(self.log_file),
            "interrupted": interrupted,
        }
        log.info("done: %s", ", ".join(f"{key}={_fmt(value)}" for key, value in summary.items()),
                 extra={"summary": summary})
        return summary

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss on ``eval_batches`` validation batches, the same windows every time.

        Under torchrun each rank evaluates its own windows and the mean over
        ranks is returned on every rank (a collective: all ranks call it at the
        same steps), so N ranks see N times the validation text.
        """
        training = self.config.training
        self.model.eval()
        # Fixed windows: numbers comparable across steps.
        generator = torch.Generator().manual_seed(training.seed + self.rank)
        losses = []
        for _ in range(training.eval_batches):
            inputs, targets = self.data.batch("val", training.batch_size, self.device, generator)
            with self.autocast:
                losses.append(self.model(inputs, targets)[1])
        self.model.train()
        mean = torch.stack(losses).float().mean()
        if self.world_size > 1:
            mean = reduce_metrics({"val/loss": mean}, "mean")["val/loss"]
        # One sync per evaluation (not per step): the number is printed on the console.
        loss = float(mean.item())
        return {"val/loss": loss, "val/perplexity": math.exp(loss)}

    def sample(self, prompt: str = "El ", length: int = 200, temperature: float = 0.8) -> str:
        """Text written by the model, to see what the numbers mean."""
        self.model.eval()
        prompt_ids = encode(prompt).long().unsqueeze(0).to(self.device)
        generated = self.model.generate(prompt_ids, length, temperature=temperature, top_k=40)
        self.model.train()
        return decode(generated[0].tolist())

    # ------------------------------------------------------------------ #
    # Checkpoints
    # ------------------------------------------------------------------ #

    def save_checkpoint(self) -> Path | None:
        """Model, optimiser, schedule, scaler, RNG, step and the tracker run, in one file.

        Under torchrun every rank must call it (each rank's batch-stream state is
        gathered into the file) and only rank 0 writes; other ranks return None.
        """
        # Every rank's data stream, so a resumed job does not replay rank 0's on all ranks.
        data_states = _all_gather(self.data.generator.get_state()) if self.world_size > 1 else None
        if self.rank != 0:
            self.saved_step = self.step
            return None
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"step-{self.step:06d}.pt"
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {
                "python": random.getstate(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "data": self.data.generator.get_state(),
                **({"data_per_rank": data_states} if data_states is not None else {}),
            },
            "config": self.config.model_dump(mode="json"),
            "tracker": {"run_dir": str(self.run.dir), "run_id": self.run.id, "backend_ids": self.run.backend_ids}
            if self.run.dir is not None else None,
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # a crash while saving never leaves a half-written checkpoint
        self.last_checkpoint, self.saved_step = path, self.step
        log.info("step %d: checkpoint %s", self.step, path, extra={"step": self.step, "checkpoint": str(path)})
        if self.run.enabled:
            name = re.sub(r"[^A-Za-z0-9._-]+", "-", self.config.experiment_name)
            self.run.log_artifact(path, type="model", name=f"{name}-checkpoint",
                                  description=f"Model checkpoint at step {self.step}")
        return path

    def _catch_stop_signals(self) -> Callable[[], None]:
        """First Ctrl-C/SIGTERM: finish the step, checkpoint, close the tracker runs. Second: stop at once.

        Returns the function that puts the previous handlers back.
        """
        self.stop_requested = False
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # signal handlers can only be set from the main thread

        def request_stop(signum: int, frame: FrameType | None) -> None:
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            log.warning("%s: stopping after this step (again to stop at once)", signal.Signals(signum).name)

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def _finish_run(self, status: Status, consistent: bool) -> None:
        """Last checkpoint (unless the run failed or stopped mid-step), an alert, the
        tracker's flush; then this trainer's process group is left, whatever happened."""
        run = self.run
        if status == "killed":
            log.warning("stopped after step %d", self.step)
        try:
            if consistent and status != "failed" and self.step > self.saved_step:
                self.save_checkpoint()
            if run.enabled:
                name = self.config.experiment_name
                if status == "success":
                    run.alert("Training complete", f"Experiment {name} finished at step {self.step}", "info")
                else:
                    run.alert(f"Training {status}", f"Experiment {name} stopped at step {self.step}",
                              "warn" if status == "killed" else "error")
            undelivered = run.finish(status)
            if any(undelivered.values()):
                log.warning("tracker events not yet delivered: %s (run `foundry-track sync %s`)", undelivered, run.dir)
        finally:
            self._leave_process_group()

    def _restore(self, state: dict[str, Any]) -> None:
        """Model, optimiser, schedule, scaler, RNG and step from a checkpoint; each rank gets its own batch stream."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        per_rank = rng.get("data_per_rank")
        if per_rank is not None and len(per_rank) == self.world_size:
            self.data.generator.set_state(per_rank[self.rank])
        elif self.rank == 0:
            self.data.generator.set_state(rng["data"])
        else:  # the checkpoint was saved by a job of another size: a fresh stream for this rank
            self.data.generator.manual_seed(self.config.training.seed + self.rank + 7919 * int(state["step"]))
            log.warning("the checkpoint has no batch stream for rank %d; starting a new one", self.rank)
        self.step = int(state["step"])
        log.info("resumed from step %d (%s)", self.step, self.config.training.resume_from)

    # ------------------------------------------------------------------ #
    # Setup helpers
    # ------------------------------------------------------------------ #

    def _start_tracking(self, checkpoint: dict[str, Any] | None) -> foundry_track.Run:
        """Start (or continue) the tracker run; backend option errors surface here, before the model exists."""
        cfg = self.config.tracking_config()
        values = cfg.model_dump()
        values["tags"] = list(dict.fromkeys([*cfg.tags, *self._get_experiment_tags()]))
        if not Path(cfg.dir).is_absolute():
            values["dir"] = self.base_dir / cfg.dir
        cfg = TrackingConfig.model_validate(values)
        resume = None
        tracker = (checkpoint or {}).get("tracker")
        if tracker:
            if Path(tracker["run_dir"]).is_dir():
                resume = tracker["run_dir"]
            else:
                log.warning("the checkpoint's tracker run %s is gone; starting a new run", tracker["run_dir"])
        # With W&B asked for, the guide's direct wandb.* calls go to this run too.
        return start_run(cfg, resume=resume, wandb_calls=wandb_requested(self.config))

    # ------------------------------------------------------------------ #
    # torchrun
    # ------------------------------------------------------------------ #

    def _join_process_group(self) -> tuple[int, int, bool]:
        """Rank, world size, and whether this trainer started the process group.

        torchrun sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the rendezvous
        variables; a group the caller already initialised is used as it is.
        """
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size(), False
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return 0, 1, False
        if not dist.is_available():
            raise ConfigError(f"WORLD_SIZE={world} but this PyTorch build has no torch.distributed")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size(), True

    def _leave_process_group(self) -> None:
        """Destroy the process group if this trainer created it (at most once)."""
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_process_group = False

    def _setup_logging(self) -> Path:
        """Rank 0 logs as before; other ranks write ``<experiment>-rank<N>`` and print warnings only."""
        logging_config = self.config.logging
        log_dir = self._path(logging_config.dir)
        if self.rank == 0:
            return setup_logging(logging_config, log_dir, self.config.experiment_name)
        quiet = logging_config.model_copy(update={"console_level": "WARNING"})
        return setup_logging(quiet, log_dir, f"{self.config.experiment_name}-rank{self.rank}")

    def _log_local_loss(self, step: int, loss: torch.Tensor) -> None:
        """This rank's own loss, before the mean over ranks, in its log file (DEBUG only:
        reading the value waits for the GPU)."""
        if log.isEnabledFor(logging.DEBUG):
            local = float(loss.item())
            log.debug("step %d: rank %d local loss %.4f", step, self.rank, local,
                      extra={"step": step, "rank": self.rank, "local_loss": local})

    def _stop_agreed(self) -> bool:
        """Stop only when every rank stops: a rank that left the loop alone would leave
        the others waiting in DDP's all-reduce. One tiny all-reduce per logged step."""
        flag = torch.tensor([1.0 if self.stop_requested else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _get_experiment_tags(self) -> list[str]:
        """Tags for the run: the experiment, the model's shape, and ``amp`` when mixed
        precision runs (``training.use_amp`` on a CUDA device; it is ignored on the CPU)."""
        tags = [self.config.experiment_name]
        tags.append(f"layers-{self.config.model.layers}")
        tags.append(f"hidden-{self.config.model.hidden_size}")
        if self.config.training.use_amp and self.device.type == "cuda":
            tags.append("amp")
        return tags

    def _lr_factor(self, step: int) -> float:
        """Linear warmup to 1, then cosine decay to ``min_lr_ratio`` at ``training.steps``."""
        training = self.config.training
        if step < training.warmup_steps:
            return (step + 1) / training.warmup_steps
        progress = min(1.0, (step - training.warmup_steps) / max(1, training.steps - training.warmup_steps))
        return training.min_lr_ratio + (1 - training.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def _perf_metrics(self, interval: float, data_time: float, steps: int) -> dict[str, float]:
        """``profile_performance``: where the host time of the last interval went (no GPU sync)."""
        return {
            "perf/step_ms": 1000 * interval / steps,
            "perf/data_ms": 1000 * data_time / steps,
            "perf/data_fraction": data_time / interval if interval else 0.0,
        }

    def _path(self, path: str | os.PathLike[str]) -> Path:
        """``path`` as given when absolute, else under ``base_dir``."""
        resolved = Path(path)
        return resolved if resolved.is_absolute() else self.base_dir / resolved

    @staticmethod
    def _pick_device(name: str) -> torch.device:
        """``training.device`` as a torch device; under torchrun, this process's GPU."""
        if name == "cuda" and not torch.cuda.is_available():
            raise ConfigError("training.device: 'cuda' requested but no CUDA device is available; use 'auto' or 'cpu'")
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # one GPU per torchrun process
        return torch.device(name)


def _fmt(value: Any) -> str:
    """A summary value for the log line: large floats with thousands separators, small ones to 4 digits."""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def _all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a collective)."""
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :meth:`Trainer.save_checkpoint` (tensors and plain data only)."""
    if not Path(path).is_file():
        raise ConfigError(f"training.resume_from: no checkpoint at {str(path)!r}")
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state
