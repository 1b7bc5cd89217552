"""Train the GPT on the corpus, tracked with foundry_track.

    trainer = Trainer(ExperimentConfig(**yaml.safe_load(open("configs/quickstart.yaml"))))
    trainer.train()

Everything is built in ``__init__`` (logs, tracker run, data, model,
optimiser, and the checkpoint to resume from); ``train`` is one loop that
reads top to bottom. The tracker is called in a few lines of that loop:
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
from pathlib import Path
from typing import Any, List

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

import foundry_track
from foundry_track import TrackingConfig
from foundry_track.distributed import reduce_metrics

from model_foundry.config import ConfigError, ExperimentConfig
from model_foundry.data import ByteDataset, decode, encode
from model_foundry.logging_components import set_console_hook, setup_logging, system_metrics
from model_foundry.model import GPT
from model_foundry.progress import Progress

__all__ = ["Trainer", "load_checkpoint"]

log = logging.getLogger("model_foundry")
CHECKPOINT_DIR = "checkpoints"


class Trainer:
    def __init__(self, config: ExperimentConfig, base_dir: str | os.PathLike[str] = ".", progress: bool = True) -> None:
        self.config = config
        self.base_dir = Path(base_dir).resolve()
        self.show_progress = progress
        T = config.training
        # A checkpoint to resume from also says which tracker run to continue.
        checkpoint = load_checkpoint(self._path(T.resume_from)) if T.resume_from else None
        self.device = self._pick_device(T.device)
        # Before the tracker starts: foundry_track broadcasts rank 0's run id and directory.
        self.rank, self.world_size, self.owns_process_group = self._join_process_group()
        try:
            self.log_file = self._setup_logging()
            self.data = ByteDataset(config.data, config.model.context_length, self.base_dir, T.seed + self.rank)
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
        config, T = self.config, self.config.training
        torch.manual_seed(T.seed)
        random.seed(T.seed)
        if T.num_threads:
            torch.set_num_threads(T.num_threads)
        self.model = GPT(config.model).to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.optimizer_groups(T.weight_decay), lr=T.lr, betas=T.betas,
            fused=self.device.type == "cuda",
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        # bf16 needs no loss scaling; fp16 (older GPUs) does.
        amp = T.use_amp and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
        self.autocast = torch.autocast("cuda", dtype=self.amp_dtype) if amp else contextlib.nullcontext()
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp and self.amp_dtype == torch.float16)
        if T.use_amp and not amp:
            log.info("training.use_amp applies to CUDA only; training in float32 on %s", self.device)

        self.step = 0
        self.stop_requested = False
        if checkpoint is not None:
            self._restore(checkpoint)
        # Forward and backward go through the DDP wrapper (it all-reduces the
        # gradients); checkpoints, evaluation and sampling use the plain model.
        # DDP copies rank 0's weights to every rank here, restored ones included.
        self.ddp_model = self.model if self.world_size == 1 else DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if checkpoint is None:
            # Hyperparameters once per run (a resumed run keeps the ones it started with).
            self.run.log_params(config.model_dump())
            self.run.log_params({
                "model/num_parameters": self.model.num_parameters(),
                "data/train_bytes": len(self.data.train), "data/val_bytes": len(self.data.val),
                "data/removed_sentences": self.data.removed_sentences,
            })

    # ------------------------------------------------------------------ #
    # The training loop
    # ------------------------------------------------------------------ #

    def train(self) -> dict[str, Any]:
        """Train until ``training.steps``; returns a summary (losses, throughput, paths)."""
        T, L = self.config.training, self.config.logging
        model, optimizer, run = self.ddp_model, self.optimizer, self.run
        tokens_per_step = T.batch_size * self.config.model.context_length * self.world_size  # the whole job's
        start = self.step
        progress = Progress(T.steps, start=start, enabled=self.show_progress and self.rank == 0)
        set_console_hook(progress.clear)
        restore_signals = self._catch_stop_signals()
        log.info("training steps %d..%d, %d tokens per step", start + 1, T.steps, tokens_per_step)

        first_loss = last_loss = None
        val: dict[str, float] = {}
        data_time = 0.0
        t_start = t_log = time.perf_counter()
        step_log = start
        status, consistent, stopped = "failed", True, False
        try:
            model.train()
            for step in range(start + 1, T.steps + 1):
                t_data = time.perf_counter()
                x, y = self.data.batch("train", T.batch_size, self.device)
                data_time += time.perf_counter() - t_data

                with self.autocast:
                    _, loss = model(x, y)
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                grad_norm = nn.utils.clip_grad_norm_(model.parameters(), T.grad_clip or math.inf)
                self.scaler.step(optimizer)
                self.scaler.update()
                optimizer.zero_grad(set_to_none=True)
                lr = optimizer.param_groups[0]["lr"]
                self.scheduler.step()
                self.step = step

                # Tracking. Tensors are handed over as they are: no .item(), no GPU sync.
                if step % L.log_metrics_every_n_steps == 0:
                    now = time.perf_counter()
                    tokens_per_sec = (step - step_log) * tokens_per_step / (now - t_log)
                    last_loss = loss.detach()
                    metrics = {
                        "train/loss": last_loss, "train/lr": lr,
                        "train/grad_norm": grad_norm, "train/tokens_per_sec": tokens_per_sec,
                        **(self._perf_metrics(now - t_log, data_time, step - step_log) if L.profile_performance else {}),
                    }
                    if self.world_size > 1:
                        self._log_local_loss(step, last_loss)
                        # A collective: every rank gets here at the same step with the same keys.
                        # Mean over ranks: the loss of the job's whole batch; lr and grad_norm
                        # (gradients already all-reduced by DDP) are equal on every rank, and
                        # tokens_per_sec is already the job's total (it counts every rank's tokens).
                        metrics = reduce_metrics(metrics, "mean")
                        last_loss = metrics["train/loss"]
                    # exp of the mean loss, not the mean of the ranks' perplexities.
                    metrics["train/perplexity"] = last_loss.exp()
                    first_loss = last_loss if first_loss is None else first_loss
                    run.log(metrics, step=step)  # a no-op on ranks other than 0
                    progress.update(step, last_loss, tokens_per_sec)
                    t_log, step_log, data_time = now, step, 0.0
                if step % L.log_detailed_metrics_every_n_steps == 0 or step == T.steps:
                    val = self.evaluate()
                    run.log(val, step=step)
                    log.info("step %d: val loss %.4f", step, val["val/loss"], extra={"step": step, **val})
                if step % L.log_memory_every_n_steps == 0:
                    run.log(system_metrics(self.device), step=step)
                if T.checkpoint_every_n_steps and step % T.checkpoint_every_n_steps == 0 and step < T.steps:
                    self.save_checkpoint()
                progress.update(step)
                # Ctrl-C or SIGTERM: stop cleanly after this step (under torchrun: at the
                # next logged step, all ranks together; see _stop_agreed).
                if self.world_size > 1:
                    stopped = step % L.log_metrics_every_n_steps == 0 and self._stop_agreed()
                else:
                    stopped = self.stop_requested
                if stopped:
                    break
            status = "killed" if stopped else "success"
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once; a half-done step is not saved
            status, consistent = "killed", False
            raise
        finally:
            elapsed = time.perf_counter() - t_start
            progress.close()
            set_console_hook(None)
            restore_signals()
            if status == "killed":
                log.warning("stopped after step %d", self.step)
            try:
                self._finish_run(status, save=status != "failed" and consistent)
            finally:
                self._leave_process_group()

        summary = {
            "steps": self.step - start,
            "steps_per_sec": (self.step - start) / elapsed if elapsed else 0.0,
            "tokens_per_sec": (self.step - start) * tokens_per_step / elapsed if elapsed else 0.0,
            "first_loss": float(first_loss) if first_loss is not None else None,
            "final_loss": float(last_loss) if last_loss is not None else None,
            "val_loss": val.get("val/loss"),
            "run_dir": str(run.dir) if run.dir else None,
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "log_file": str(self.log_file),
            "interrupted": status == "killed",
        }
        log.info("done: %s", ", ".join(f"{k}={_fmt(v)}" for k, v in summary.items()),
                 extra={"summary": summary})
        return summary

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss on ``eval_batches`` validation batches, the same windows every time.

        Under torchrun each rank evaluates its own windows and the mean over
        ranks is returned on every rank (a collective: all ranks call it at the
        same steps), so N ranks see N times the validation text.
        """
        T = self.config.training
        self.model.eval()
        # Fixed windows: numbers comparable across steps.
        generator = torch.Generator().manual_seed(T.seed + self.rank)
        losses = []
        for _ in range(T.eval_batches):
            x, y = self.data.batch("val", T.batch_size, self.device, generator)
            with self.autocast:
                losses.append(self.model(x, y)[1])
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
        idx = encode(prompt).long().unsqueeze(0).to(self.device)
        out = self.model.generate(idx, length, temperature=temperature, top_k=40)
        self.model.train()
        return decode(out[0].tolist())

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
        log_artifact = getattr(self.run, "log_artifact", None)  # Run gained artifacts in a later foundry_track
        if log_artifact is not None and self.run.enabled:
            name = re.sub(r"[^A-Za-z0-9._-]+", "-", self.config.experiment_name)
            log_artifact(path, type="model", name=f"{name}-checkpoint", description=f"Model checkpoint at step {self.step}")
        return path

    def _catch_stop_signals(self) -> Any:
        """First Ctrl-C/SIGTERM: finish the step, checkpoint, close the tracker runs. Second: stop at once."""
        self.stop_requested = False
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # signal handlers can only be set from the main thread

        def request_stop(signum: int, frame: Any) -> None:
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            log.warning("%s: stopping after this step (again to stop at once)", signal.Signals(signum).name)

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        return lambda: [signal.signal(sig, handler) for sig, handler in previous.items()]

    def _finish_run(self, status: str, save: bool) -> None:
        """Last checkpoint (unless the run failed), an alert, and the tracker's flush."""
        run = self.run
        if save and self.step > self.saved_step:
            self.save_checkpoint()
        alert = getattr(run, "alert", None)
        if alert is not None and run.enabled:
            if status == "success":
                alert("Training complete", f"Experiment {self.config.experiment_name} finished at step {self.step}", "info")
            else:
                alert(f"Training {status}", f"Experiment {self.config.experiment_name} stopped at step {self.step}",
                      "warn" if status == "killed" else "error")
        undelivered = run.finish(status)
        if any(undelivered.values()):
            log.warning("tracker events not yet delivered: %s (run `foundry-track sync %s`)", undelivered, run.dir)

    def _restore(self, state: dict[str, Any]) -> None:
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
        return foundry_track.init(cfg, resume=resume)

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
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_process_group = False

    def _setup_logging(self) -> Path:
        """Rank 0 logs as before; other ranks write ``<experiment>-rank<N>`` and print warnings only."""
        L = self.config.logging
        if self.rank == 0:
            return setup_logging(L, self._path(L.dir), self.config.experiment_name)
        quiet = L.model_copy(update={"console_level": "WARNING"})
        return setup_logging(quiet, self._path(L.dir), f"{self.config.experiment_name}-rank{self.rank}")

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

    def _get_experiment_tags(self) -> List[str]:
        """Tags for the run: the experiment, the model's shape, AMP."""
        tags = [self.config.experiment_name]
        tags.append(f"layers-{self.config.model.layers}")
        tags.append(f"hidden-{self.config.model.hidden_size}")
        if self.config.training.use_amp:
            tags.append("amp")
        return tags

    def _lr_factor(self, step: int) -> float:
        """Linear warmup to 1, then cosine decay to ``min_lr_ratio`` at ``training.steps``."""
        T = self.config.training
        if step < T.warmup_steps:
            return (step + 1) / T.warmup_steps
        progress = min(1.0, (step - T.warmup_steps) / max(1, T.steps - T.warmup_steps))
        return T.min_lr_ratio + (1 - T.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def _perf_metrics(self, interval: float, data_time: float, steps: int) -> dict[str, float]:
        """``profile_performance``: where the host time of the last interval went (no GPU sync)."""
        return {
            "perf/step_ms": 1000 * interval / steps,
            "perf/data_ms": 1000 * data_time / steps,
            "perf/data_fraction": data_time / interval if interval else 0.0,
        }

    def _path(self, path: str | os.PathLike[str]) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.base_dir / p

    @staticmethod
    def _pick_device(name: str) -> torch.device:
        if name == "cuda" and not torch.cuda.is_available():
            raise ConfigError("training.device: 'cuda' requested but no CUDA device is available; use 'auto' or 'cpu'")
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # one GPU per torchrun process
        return torch.device(name)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def _all_gather(obj: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :meth:`Trainer.save_checkpoint` (tensors and plain data only)."""
    if not Path(path).is_file():
        raise ConfigError(f"training.resume_from: no checkpoint at {str(path)!r}")
    return torch.load(path, map_location="cpu", weights_only=True)
