"""A sampler thread that logs ``system/*`` metrics every few seconds.

CPU % and process memory come from psutil when installed (the trainer extra
has it), else from the standard library; GPU memory from ``torch.cuda`` when
torch is already imported and CUDA initialised (reading these counters does
not sync the device), and utilisation from NVML when ``pynvml`` is installed.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from foundry_track.run import Run

__all__ = ["SystemSampler", "sample"]

_log = logging.getLogger("foundry_track")
_GB = float(1 << 30)


class _Cpu:
    """CPU % of this process since the previous call, without psutil."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), sum(os.times()[:2]))

    def percent(self) -> float:
        now, cpu = time.monotonic(), sum(os.times()[:2])
        (then, before), self._last = self._last, (now, cpu)
        return 100.0 * (cpu - before) / max(now - then, 1e-9)


def _rss_bytes() -> float | None:
    try:
        with open("/proc/self/statm") as fh:
            return float(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _gpu() -> dict[str, float]:
    out: dict[str, float] = {}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        for i in range(torch.cuda.device_count()):
            out[f"system/gpu{i}_allocated_gb"] = torch.cuda.memory_allocated(i) / _GB
            out[f"system/gpu{i}_reserved_gb"] = torch.cuda.memory_reserved(i) / _GB
            out[f"system/gpu{i}_peak_allocated_gb"] = torch.cuda.max_memory_allocated(i) / _GB
    try:
        import pynvml
    except ImportError:
        return out
    try:
        pynvml.nvmlInit()
        for i in range(pynvml.nvmlDeviceGetCount()):
            dev = pynvml.nvmlDeviceGetHandleByIndex(i)
            out[f"system/gpu{i}_utilization_pct"] = float(pynvml.nvmlDeviceGetUtilizationRates(dev).gpu)
            out[f"system/gpu{i}_memory_used_gb"] = pynvml.nvmlDeviceGetMemoryInfo(dev).used / _GB
    except Exception:  # noqa: BLE001 - no driver, no permission: just no NVML figures
        pass
    return out


def sample(cpu: _Cpu | None = None, process: Any = None) -> dict[str, float]:
    """One reading of every system metric available here."""
    out: dict[str, float] = {}
    if process is not None:
        out["system/cpu_percent"] = float(process.cpu_percent(None))
        out["system/process_rss_gb"] = process.memory_info().rss / _GB
    else:
        if cpu is not None:
            out["system/cpu_percent"] = cpu.percent()
        rss = _rss_bytes()
        if rss is not None:
            out["system/process_rss_gb"] = rss / _GB
    out.update(_gpu())
    return out


class SystemSampler:
    def __init__(self, run: Run, interval: float) -> None:
        self._run = run
        self._interval = interval
        self._stop = threading.Event()
        try:
            import psutil

            self._process: Any = psutil.Process()
            self._process.cpu_percent(None)  # the first reading is always 0
        except ImportError:
            self._process = None
        self._cpu = _Cpu()
        self._thread = threading.Thread(target=self._loop, name="foundry-track-system", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._run._log_sample(sample(self._cpu, self._process))
            except Exception:  # noqa: BLE001 - a sampler must never take the run down
                _log.exception("system metrics sampler failed; it stops")
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
