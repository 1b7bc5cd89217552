"""What replacing a framework's three tracker integrations with foundry-track's one costs or saves.

1. Lightning: ``Trainer.fit`` of the same model for the same steps with its
   three loggers (``TensorBoardLogger``, ``MLFlowLogger``, ``WandbLogger``
   offline) versus ``FoundryTrackLogger`` with the same three backends.
2. Hugging Face ``Trainer`` on a tiny GPT-2 built from a config:
   ``report_to=["wandb", "tensorboard", "mlflow"]`` versus ``report_to="none"``
   plus ``FoundryTrackCallback``.

Both logged every step (``log_every_n_steps=1``, ``logging_steps=1``). The
wall time is the framework's call (``fit``, ``train``); "closed" adds what it
takes until every tracker has closed its run (the W&B run the frameworks leave
open until the process exits is finished here). An untracked run of each is the
floor. Each case runs ``--repeat`` times in rotating order; medians are
reported. Ratios are tracked / foundry-track: above 1 means foundry-track is faster.

    python benchmarks/integrations.py                       # default sizes
    python benchmarks/integrations.py --steps 40 --hf-steps 10 --repeat 1   # a quick check

MLflow logs to a throwaway local ``mlflow server`` (``--mlflow-uri`` for
another, e.g. ``sqlite:///bench.db``). Nothing reaches the network: W&B is offline.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import local_tracker_env, machine  # noqa: E402
from _mlflow import mlflow_target  # noqa: E402


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "transformers", "mlflow", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                       "TRANSFORMERS_VERBOSITY": "error"})


def _warm_up() -> None:
    """Import what every case uses, so that the first case does not pay for the imports."""
    import lightning.pytorch  # noqa: F401
    import lightning.pytorch.loggers  # noqa: F401
    import mlflow  # noqa: F401
    import tensorboard  # noqa: F401
    import transformers  # noqa: F401
    import wandb  # noqa: F401

    import foundry_track.integrations.lightning  # noqa: F401
    import foundry_track.integrations.transformers  # noqa: F401


def _finish_wandb() -> None:
    import wandb

    if wandb.run is not None:
        wandb.run.finish()


def _config(case_dir: Path, uri: str, project: str) -> dict[str, Any]:
    return {"dir": str(case_dir / "runs"), "project": project, "fallback": None,
            "backends": {"tensorboard": {}, "mlflow": {"tracking_uri": uri}, "wandb": {"dir": str(case_dir)}}}


# -- Lightning -------------------------------------------------------------- #


def _lightning_fit(steps: int, width: int, logger: Any, case_dir: Path) -> float:
    import lightning.pytorch as pl
    import torch

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 1))

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log_dict({"train/loss": loss, "train/lr": 0.01, "train/batch": float(batch_idx)})
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    x = torch.randn(steps * 16, width)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, :1]), batch_size=16)
    trainer = pl.Trainer(max_epochs=1, logger=logger, log_every_n_steps=1, accelerator="cpu", devices=1,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=str(case_dir))
    start = time.perf_counter()
    trainer.fit(Model(), loader)
    return time.perf_counter() - start


def lightning_case(name: str, steps: int, width: int, uri: str, tmp: Path, round_: int = 0) -> tuple[float, float]:
    case_dir = tmp / f"lightning-{name.replace(' ', '-')}-{round_}"
    case_dir.mkdir()
    start = time.perf_counter()
    if name == "untracked":
        fit = _lightning_fit(steps, width, False, case_dir)
    elif name == "three loggers":
        from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

        loggers = [TensorBoardLogger(save_dir=str(case_dir / "tb")),
                   MLFlowLogger(experiment_name=f"bench-lightning-{case_dir.name}", tracking_uri=uri),
                   WandbLogger(project="bench-lightning", save_dir=str(case_dir), offline=True)]
        fit = _lightning_fit(steps, width, loggers, case_dir)
        _finish_wandb()
    else:
        from foundry_track.integrations.lightning import FoundryTrackLogger

        logger = FoundryTrackLogger(_config(case_dir, uri, f"bench-lightning-ft-{tmp.name}-{round_}"))
        fit = _lightning_fit(steps, width, logger, case_dir)  # finalize() closed the run
    return fit, time.perf_counter() - start


# -- Hugging Face Trainer ------------------------------------------------------ #


def hf_case(name: str, steps: int, uri: str, tmp: Path, round_: int = 0) -> tuple[float, float]:
    import torch
    import transformers

    case_dir = tmp / f"hf-{name.replace(' ', '-')}-{round_}"
    case_dir.mkdir()
    callbacks: list[Any] = []
    report_to: Any = "none"
    if name == "report_to three":
        report_to = ["wandb", "tensorboard", "mlflow"]
        os.environ.update({"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": f"bench-hf-{tmp.name}-{round_}",
                           "WANDB_DIR": str(case_dir), "WANDB_PROJECT": "bench-hf"})
    elif name == "foundry-track":
        from foundry_track.integrations.transformers import FoundryTrackCallback

        callbacks.append(FoundryTrackCallback(_config(case_dir, uri, f"bench-hf-ft-{tmp.name}-{round_}")))

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=100,
                                                                 n_positions=16))
    ids = torch.randint(0, 100, (steps * 4, 16))
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = transformers.TrainingArguments(
        output_dir=str(case_dir / "out"), max_steps=steps, per_device_train_batch_size=4, logging_steps=1,
        save_strategy="no", report_to=report_to, use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    trainer.remove_callback(transformers.PrinterCallback)  # disable_tqdm prints every log otherwise
    start = time.perf_counter()
    trainer.train()
    train = time.perf_counter() - start
    if name == "report_to three":
        _finish_wandb()
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_DIR", "WANDB_PROJECT"):
            os.environ.pop(var, None)
    return train, time.perf_counter() - start


def _report(title: str, cases: dict[str, tuple[float, float]], theirs: str) -> None:
    print(f"\n{title}")
    for name, (call, closed) in cases.items():
        print(f"  {name:<18} call {call:7.2f} s   closed {closed:7.2f} s")
    ours = cases["foundry-track"]
    print(f"  ratio {theirs} / foundry-track: call {cases[theirs][0] / ours[0]:.2f}x, "
          f"closed {cases[theirs][1] / ours[1]:.2f}x")


def _run(cases: list[str], run_one: Callable[[str, int], tuple[float, float]],
         repeat: int) -> dict[str, tuple[float, float]]:
    """Each case ``repeat`` times, the order rotated each round (so no case is
    always first, or always after the same one); the median of each."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for round_ in range(repeat):
        for name in cases[round_ % len(cases):] + cases[:round_ % len(cases)]:
            gc.collect()
            times[name].append(run_one(name, round_))
    return {name: (statistics.median(c for c, _ in got), statistics.median(t for _, t in got))
            for name, got in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="Lightning training steps (default 2000)")
    parser.add_argument("--width", type=int, default=64, help="Lightning model width (default 64)")
    parser.add_argument("--hf-steps", type=int, default=300, help="Hugging Face Trainer steps (default 300)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each case, median reported (default 3)")
    parser.add_argument("--mlflow-uri", default=None, help="log MLflow there instead of a throwaway local server")
    args = parser.parse_args(argv)
    _quiet()
    with tempfile.TemporaryDirectory(prefix="ft-bench-integrations-") as name:
        tmp = Path(name)
        local_tracker_env(tmp)
        uri, server = mlflow_target(["mlflow"], args.mlflow_uri, tmp)
        try:
            print(machine())
            _warm_up()
            _lightning_fit(8, args.width, False, tmp)  # the first fit of a process pays one-time costs
            light = _run(["untracked", "three loggers", "foundry-track"],
                         lambda case, r: lightning_case(case, args.steps, args.width, uri, tmp, r), args.repeat)
            _report(f"Lightning Trainer.fit, {args.steps} steps, every step logged", light, "three loggers")
            hf = _run(["untracked", "report_to three", "foundry-track"],
                      lambda case, r: hf_case(case, args.hf_steps, uri, tmp, r), args.repeat)
            _report(f"Hugging Face Trainer.train, {args.hf_steps} steps, every step logged", hf, "report_to three")
        finally:
            if server is not None:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
