"""A CUDA tensor handed to ``run.log`` never synchronises the training thread:
the call returns while the GPU is still busy computing it, and the value
read later (on the journal's thread) is the right one. Runs where CUDA is
available; skipped elsewhere (CI has no GPU)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

import foundry_track as ft  # noqa: E402
from tests.helpers.tb import scalars  # noqa: E402


def test_a_cuda_loss_is_logged_without_waiting_for_the_gpu(tmp_path: Path) -> None:
    run = ft.init({"dir": str(tmp_path), "backends": {"tensorboard": {}}, "fallback": None})
    device = torch.device("cuda")
    torch.ones(1, device=device).item()  # CUDA context up before timing
    calls = []
    for step in range(5):
        torch.cuda._sleep(200_000_000)  # keeps the GPU busy for ~0.1-0.2 s
        loss = torch.full((), float(step) + 0.5, device=device) * 2  # queued behind the sleep
        started = time.perf_counter()
        run.log({"loss": loss}, step=step)
        calls.append(time.perf_counter() - started)
        assert not torch.cuda.current_stream().query(), "the GPU finished already: the test cannot tell"
    run.finish()
    assert max(calls) < 0.02, f"run.log waited for the GPU: {calls}"
    got = scalars(run.backend_ids["tensorboard"]["log_dir"])["loss"]
    assert got == [(s, pytest.approx((s + 0.5) * 2)) for s in range(5)]


def test_a_cuda_tensor_changed_in_place_after_the_call_logs_the_value_at_the_call(tmp_path: Path) -> None:
    run = ft.init({"dir": str(tmp_path), "backends": {"tensorboard": {}}, "fallback": None})
    acc = torch.zeros((), device="cuda")
    for step in range(3):
        acc += 1.0
        run.log({"acc": acc}, step=step)
        acc.zero_() if step == 1 else None  # an accumulator reset right after logging
    run.finish()
    assert scalars(run.backend_ids["tensorboard"]["log_dir"])["acc"] == [(0, 1.0), (1, 2.0), (2, 1.0)]
