"""The framework integrations with the real frameworks on the CPU: Lightning's
``Trainer.fit``, the Hugging Face ``Trainer`` and ``Accelerator``, each logging
through foundry-track to TensorBoard, a real MLflow server and W&B offline,
read back from each."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from foundry_track.rundir import read_run_file
from tests.helpers.mlflow_server import MlflowServer
from tests.helpers.tb import scalars
from tests.helpers.wandb_offline import OfflineRun, finished_runs

STEP_METRIC = "trainer/step"

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(Path.cwd() / ".hf"))


def _config(tmp_path: Path, server: MlflowServer) -> dict[str, Any]:
    return {"dir": str(tmp_path / "runs"), "project": f"integrations-{tmp_path.name}", "fallback": None,
            "backends": {"tensorboard": {}, "mlflow": {"tracking_uri": server.uri},
                         "wandb": {"dir": str(tmp_path / "wandb")}}}


class Backends:
    """What each backend holds for one foundry-track run directory."""

    def __init__(self, run_dir: Path, tmp_path: Path, server: MlflowServer) -> None:
        from mlflow import MlflowClient

        self.ids = read_run_file(run_dir)["backend_ids"]
        self.client = MlflowClient(tracking_uri=server.uri)
        self.mlflow_run = self.client.get_run(self.ids["mlflow"]["run_id"])
        self.tb = scalars(self.ids["tensorboard"]["log_dir"])
        (self.wandb,) = finished_runs(tmp_path / "wandb")
        assert self.wandb.run_id == self.ids["wandb"]["run_id"]

    def steps(self, key: str) -> dict[str, list[int]]:
        """The steps ``key`` was logged at, in each backend, sorted (duplicates kept)."""
        return {
            "tensorboard": sorted(s for s, _ in self.tb.get(key, [])),
            "mlflow": sorted(m.step for m in self.client.get_metric_history(self.mlflow_run.info.run_id, key)),
            "wandb": _wandb_steps(self.wandb, key),
        }

    def artifacts(self, folder: str) -> list[str]:
        return [f.path for f in self.client.list_artifacts(self.mlflow_run.info.run_id, folder)]


def _wandb_steps(run: OfflineRun, key: str) -> list[int]:
    return sorted(int(row[STEP_METRIC]) for row in run.history if key in row)


def _same_everywhere(backends: Backends, key: str, expected: list[int]) -> None:
    assert backends.steps(key) == {"tensorboard": expected, "mlflow": expected, "wandb": expected}, key


# -- Lightning ------------------------------------------------------------- #

pl = pytest.importorskip("lightning.pytorch", reason="pip install 'foundry-track[lightning]'")


class _Regression(pl.LightningModule):  # type: ignore[misc,name-defined]
    def __init__(self, lr: float = 0.1, api_key: str = "s3cret-key", fail_at_step: int = -1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.global_step == self.hparams.fail_at_step:
            raise RuntimeError("interrupted on purpose")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _loader() -> Any:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=gen)
    data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
    return torch.utils.data.DataLoader(data, batch_size=8)  # 4 steps an epoch


def _fit(logger: Any, root: Path, epochs: int, module: Any, ckpt_path: str | None = None) -> Any:
    trainer = pl.Trainer(max_epochs=epochs, logger=logger, log_every_n_steps=1, accelerator="cpu",
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root))
    trainer.fit(module, _loader(), _loader(), ckpt_path=ckpt_path)
    return trainer


def test_lightning_fit_logs_every_step_once_in_each_backend(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    from foundry_track.integrations.lightning import FoundryTrackLogger

    logger = FoundryTrackLogger(_config(tmp_path, mlflow_server), log_model=True)
    assert pickle.loads(pickle.dumps(logger)).name == logger.name  # ddp_spawn pickles the loggers
    trainer = _fit(logger, tmp_path, 3, _Regression())
    run = logger.experiment if logger._handle.run is None else logger._handle.run
    assert logger.version == run.id and logger.log_dir == str(run.dir) and logger.name == run.config.project
    assert Path(trainer.checkpoint_callback.dirpath).is_relative_to(logger.save_dir)

    backends = Backends(run.dir, tmp_path, mlflow_server)
    _same_everywhere(backends, "train/loss", list(range(12)))
    _same_everywhere(backends, "val/loss", [3, 7, 11])
    params = backends.mlflow_run.data.params
    assert params["lr"] == "0.1" and params["api_key"] == "***"
    assert backends.wandb.config["api_key"] == "***"
    assert backends.artifacts("model") == ["model/epoch_2-step_12"]
    assert [a["type"] for a in backends.wandb.artifacts] == ["model"]
    assert backends.mlflow_run.info.status == "FINISHED" and backends.wandb.exit_code == 0
    assert read_run_file(run.dir)["status"] == "success"


def test_lightning_run_interrupted_and_resumed_continues_the_same_runs(tmp_path: Path,
                                                                        mlflow_server: MlflowServer) -> None:
    from foundry_track.integrations.lightning import FoundryTrackLogger

    cfg = _config(tmp_path, mlflow_server)
    first = FoundryTrackLogger(cfg)
    with pytest.raises(RuntimeError, match="on purpose"):
        _fit(first, tmp_path, 4, _Regression(fail_at_step=9))
    run_dir = Path(first.log_dir or "")
    assert read_run_file(run_dir)["status"] == "failed"
    checkpoint = next((Path(first.save_dir) / first.name / str(first.version) / "checkpoints").glob("*.ckpt"))
    assert checkpoint.name == "epoch=1-step=8.ckpt"

    second = FoundryTrackLogger(cfg, version=str(run_dir))
    _fit(second, tmp_path, 4, _Regression(), ckpt_path=str(checkpoint))
    assert second.version == first.version and second.log_dir == str(run_dir)

    backends = Backends(run_dir, tmp_path, mlflow_server)
    # Steps 8 (logged before the failure) is logged again after the resume from step 8.
    expected = sorted([*range(16), 8])
    _same_everywhere(backends, "train/loss", expected)
    experiment = backends.mlflow_run.info.experiment_id
    assert len(backends.client.search_runs([experiment])) == 1
    assert backends.mlflow_run.info.status == "FINISHED"
    assert read_run_file(run_dir)["status"] == "success"


# -- Hugging Face Trainer ---------------------------------------------------- #


class _Tokens(torch.utils.data.Dataset):  # type: ignore[misc]
    def __init__(self, count: int) -> None:
        self.ids = torch.randint(0, 100, (count, 16), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def _hf_trainer(tmp_path: Path, callback: Any, max_steps: int) -> Any:
    transformers = pytest.importorskip("transformers", reason="pip install 'foundry-track[transformers]'")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=100,
                                                                 n_positions=16))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=max_steps, per_device_train_batch_size=4, logging_steps=1,
        eval_strategy="steps", eval_steps=3, save_strategy="steps", save_steps=3, report_to="none", use_cpu=True,
        disable_tqdm=True, hub_token="hf_s3cret", dataloader_num_workers=0)
    return transformers.Trainer(model=model, args=args, train_dataset=_Tokens(32), eval_dataset=_Tokens(8),
                                callbacks=[callback])


def test_hf_trainer_logs_train_and_eval_and_resumes_the_same_run(tmp_path: Path,
                                                                  mlflow_server: MlflowServer) -> None:
    pytest.importorskip("transformers", reason="pip install 'foundry-track[transformers]'")
    from foundry_track.integrations.transformers import IDENTITY_FILE, FoundryTrackCallback

    cfg = _config(tmp_path, mlflow_server)
    first = FoundryTrackCallback(cfg, log_checkpoints=True)
    _hf_trainer(tmp_path, first, 3).train()
    run_dir = first.run.dir
    saved = json.loads((tmp_path / "out" / "checkpoint-3" / IDENTITY_FILE).read_text())
    assert saved == {"dir": str(run_dir), "id": first.run.id}
    assert read_run_file(run_dir)["status"] == "success"

    second = FoundryTrackCallback(cfg)
    _hf_trainer(tmp_path, second, 6).train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    assert second.run.dir == run_dir

    backends = Backends(run_dir, tmp_path, mlflow_server)
    _same_everywhere(backends, "train/loss", list(range(1, 7)))
    _same_everywhere(backends, "eval/loss", [3, 6])
    params = backends.mlflow_run.data.params
    assert params["model/n_embd"] == "32" and params["args/hub_token"] == "***"
    assert backends.artifacts("model") == ["model/checkpoint-3"]
    assert backends.mlflow_run.info.status == "FINISHED" and backends.wandb.exit_code == 0
    assert read_run_file(run_dir)["status"] == "success"


# -- Accelerate ---------------------------------------------------------------- #


def test_accelerate_tracker_logs_every_step(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    accelerate = pytest.importorskip("accelerate", reason="pip install 'foundry-track[accelerate]'")
    from foundry_track.integrations.accelerate import FoundryTrackTracker

    tracker = FoundryTrackTracker(_config(tmp_path, mlflow_server))
    accelerator = accelerate.Accelerator(log_with=[tracker], cpu=True)
    accelerator.init_trackers("ignored", config={"lr": 0.01, "wandb_api_key": "s3cret"})
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model, optimizer = accelerator.prepare(model, optimizer)
    for step in range(10):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        accelerator.log({"train/loss": loss.detach(), "note": "not a number"}, step=step)
    run = accelerator.get_tracker("foundry_track", unwrap=True)
    accelerator.end_training()

    backends = Backends(run.dir, tmp_path, mlflow_server)
    _same_everywhere(backends, "train/loss", list(range(10)))
    assert backends.mlflow_run.data.params == {"lr": "0.01", "wandb_api_key": "***"}
    assert backends.mlflow_run.info.status == "FINISHED" and read_run_file(run.dir)["status"] == "success"


def test_integration_modules_are_not_imported_by_the_core() -> None:
    import subprocess
    import sys

    code = ("import sys, foundry_track as ft; ft.init({'mode': 'disabled'}); "
            "print(sorted(m for m in sys.modules if m.startswith(('foundry_track.integrations', 'lightning', "
            "'transformers', 'accelerate'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}).stdout
    assert out.strip() == "[]"


def test_pytorch_lightning_users_get_the_same_logger(tmp_path: Path) -> None:
    legacy = pytest.importorskip("pytorch_lightning", reason="pip install pytorch-lightning")
    from foundry_track.integrations.pytorch_lightning import FoundryTrackLogger

    class Module(legacy.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    logger = FoundryTrackLogger({"dir": str(tmp_path / "runs"), "backends": {"tensorboard": {}}}, prefix="pl")
    trainer = legacy.Trainer(max_epochs=1, logger=logger, log_every_n_steps=1, enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False, accelerator="cpu")
    trainer.fit(Module(), _loader())
    log_dir = read_run_file(Path(logger.log_dir or ""))["backend_ids"]["tensorboard"]["log_dir"]
    assert [s for s, _ in scalars(log_dir)["pl-train/loss"]] == [0, 1, 2, 3]
    assert read_run_file(Path(logger.log_dir or ""))["status"] == "success"


def test_a_run_started_on_rank_zero_alone_does_not_wait_for_the_other_ranks(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The frameworks call their logger on rank 0 only; ``init`` must not broadcast then."""
    from foundry_track import distributed
    from foundry_track.integrations._common import RunHandle

    class Group:  # an initialised group of two ranks whose collectives would never return
        def get_rank(self) -> int:
            return 0

        def get_world_size(self) -> int:
            return 2

        def broadcast_object_list(self, *args: Any, **kwargs: Any) -> None:
            raise AssertionError("init broadcast from rank 0 alone: the other ranks never answer")

    group = Group()
    monkeypatch.setattr(distributed, "_dist", lambda: group)
    handle = RunHandle({"dir": str(tmp_path / "runs"), "backends": {}, "fallback": None, "delivery": "thread"})
    run = handle.get()
    run.log({"x": 1.0}, step=0)
    handle.finish("success")
    assert distributed._dist() is group  # put back
    assert read_run_file(run.dir)["status"] == "success"

    again = handle.get()  # logging after the end (trainer.evaluate() after train) reopens the same run
    assert again is not run and again.dir == run.dir and not again.finished
    again.log({"x": 2.0}, step=1)
    handle._close_at_exit()  # what the exit hook does: success, since nothing failed
    assert again.finished and read_run_file(run.dir)["status"] == "success"
