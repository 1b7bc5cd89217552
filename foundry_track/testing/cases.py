"""The cases of the conformance kit: what each one sends to which hook, and what a
backend must do with it (the hint shown when it fails).

Plain Python data: no numpy, no PIL. ``docs/hooks.py`` renders the three lists
as the table in ``docs/plugins/testing.md``.
"""

from __future__ import annotations

import importlib.util
import math
import struct
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from foundry_track.events import (
    AlertEvent,
    ArtifactEvent,
    HistogramEvent,
    ImageEvent,
    MetricRow,
    ParamValue,
    RunInfo,
    Status,
    TableEvent,
    TextEvent,
)
from foundry_track.testing.readback import MAY_SKIP, MUST, Sent

if TYPE_CHECKING:
    from foundry_track import Run
    from foundry_track.plugins import BackendHooks

__all__ = ["Case", "Inputs", "log_every_kind", "new_run_cases", "note_metrics", "restart_cases", "sync_cases",
           "write_inputs"]


@dataclass(frozen=True)
class Case:
    """One hook call: its name in the report, the hook, the call itself (made
    with the backend's typed hooks), what the backend must do, and what the
    call sends (for the read-back)."""

    name: str
    hook: str
    call: Callable[[BackendHooks], object]
    hint: str = ""
    payload: object = None

    @property
    def may_skip(self) -> bool:
        """Data a backend may skip with one warning rather than store (see :data:`NO_RAISE`)."""
        return NO_RAISE in self.hint


NO_RAISE: Final = ("a backend must not raise for data it can receive: store it, or skip it with one "
                   "warning (logging/warnings), never an exception")
FLUSH: Final = ("make every event received so far durable, then return None or a checkpoint mapping str to str "
                "(where the durable data ends, e.g. a file's name and length)")


# One constructor per hook, so a case's hook name and its call cannot disagree.

def _start(name: str, run: RunInfo, options: Any, resume_state: Mapping[str, str], hint: str = "") -> Case:
    state = dict(resume_state)
    return Case(name, "tracker_start", lambda h: h.start(run, options, state), hint)


def _params(name: str, params: Mapping[str, ParamValue], hint: str = "") -> Case:
    return Case(name, "tracker_log_params", lambda h: h.log_params(params), hint, params)


def _metrics(name: str, rows: list[MetricRow], hint: str = "") -> Case:
    return Case(name, "tracker_log_metrics", lambda h: h.log_metrics(rows), hint, rows)


def _image(name: str, image: ImageEvent, hint: str = "") -> Case:
    return Case(name, "tracker_log_image", lambda h: h.log_image(image), hint, image)


def _histogram(name: str, histogram: HistogramEvent, hint: str = "") -> Case:
    return Case(name, "tracker_log_histogram", lambda h: h.log_histogram(histogram), hint, histogram)


def _table(name: str, table: TableEvent, hint: str = "") -> Case:
    return Case(name, "tracker_log_table", lambda h: h.log_table(table), hint, table)


def _text(name: str, text: TextEvent, hint: str = "") -> Case:
    return Case(name, "tracker_log_text", lambda h: h.log_text(text), hint, text)


def _artifact(name: str, artifact: ArtifactEvent, hint: str = "") -> Case:
    return Case(name, "tracker_log_artifact", lambda h: h.log_artifact(artifact), hint, artifact)


def _alert(name: str, alert: AlertEvent, hint: str = "") -> Case:
    return Case(name, "tracker_alert", lambda h: h.alert(alert), hint, alert)


def _flush(name: str, hint: str = FLUSH) -> Case:
    return Case(name, "tracker_flush", lambda h: h.flush(), hint)


def _finish(name: str, status: Status, hint: str = "", *, complete: bool = True) -> Case:
    return Case(name, "tracker_finish", lambda h: h.finish(status, complete), hint)


# --------------------------------------------------------------------------- #
# Files the cases read
# --------------------------------------------------------------------------- #


def _png(width: int = 16, height: int = 8) -> bytes:
    """A small RGB gradient as PNG bytes."""
    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in ((x * 16) % 256, (y * 32) % 256, 128))
        for y in range(height)
    )

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _rows(steps: Sequence[int], values: Callable[[int], Mapping[str, float | int]]) -> list[MetricRow]:
    now = time.time()
    return [MetricRow(step, now + i * 1e-3, dict(values(step))) for i, step in enumerate(steps)]


@dataclass(frozen=True)
class Inputs:
    """Files the cases read from disk: a PNG, an artifact file and an artifact directory."""

    png: Path
    model: Path
    model_digest: str
    folder: Path
    folder_digest: str


def write_inputs(root: Path) -> Inputs:
    """Write the files the cases read below ``root``."""
    from foundry_track.media import digest_path

    root.mkdir(parents=True, exist_ok=True)
    png = root / "gradient.png"
    png.write_bytes(_png())
    model = root / "model.bin"
    model.write_bytes(bytes(range(256)) * 16)
    folder = root / "checkpoint-10"
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"layers": 2}\n')
    (folder / "sub" / "weights.bin").write_bytes(b"\x00\x01" * 512)
    return Inputs(png, model, digest_path(model), folder, digest_path(folder))


# --------------------------------------------------------------------------- #
# The hook cases, one list per backend instance
# --------------------------------------------------------------------------- #


def new_run_cases(info: RunInfo, options: Any, files: Inputs) -> list[Case]:
    """A new run: every hook, with the edge cases the dispatcher really delivers,
    and ``tracker_flush`` where the dispatcher calls it (after start, now and
    then, before finish)."""
    return [
        _start("start a new run", info, options, {}),
        _flush("flush right after start"),
        *_params_and_metrics_cases(),
        _flush("flush after the metrics"),
        *_media_cases(files),
        _flush("flush before finish"),
        _finish("finish", "success"),
        _finish("finish twice", "success",
                "tracker_finish can be called again for a closed run (by foundry-track sync): make it harmless"),
    ]


def _params_and_metrics_cases() -> list[Case]:
    nan, inf = math.nan, math.inf
    return [
        _params("params of every value type", {
            "lr": 0.001, "layers": 4, "amp": True, "scheduler": "cosine", "warmup": None,
            "model/hidden_size": 128, "data/ñandú_ü": "日本語", "wandb/api_key": "***",
            "long_value": "x" * 10_000,
        }, NO_RAISE),
        _params("params: an empty mapping", {}, NO_RAISE),
        _params("params: a value changed by a later call", {"lr": 0.0005},
                "log_params may be called more than once; a later value replaces the earlier one where the "
                "backend allows it, else keep the first and say so once"),
        _metrics("metrics: an empty batch", [], NO_RAISE),
        _metrics("metrics: one row", _rows([0], lambda s: {"train/loss": 2.5, "train/lr": 0.001})),
        _metrics("metrics: unicode keys", _rows([1], lambda s: {
            "pérdida/entrenamiento": 2.4, "损失": 2.3, "train/loss 🔥": 2.2, "a key with spaces": 1.0,
            "weird:chars|<>?*": 0.5, "x/y/z/deep/key": 0.25,
        }), NO_RAISE),
        _metrics("metrics: NaN and inf", _rows([2, 3], lambda s: {
            "train/loss": nan if s == 2 else inf, "train/grad_norm": -inf, "train/ok": 1.0,
        }), "NaN and inf reach backends (a diverged loss): " + NO_RAISE),
        _metrics("metrics: ints, huge, tiny and negative zero", _rows([4], lambda s: {
            "count/int": 7, "count/big_int": 2**53 + 1, "huge": 1e300, "tiny": 1e-300, "neg_zero": -0.0,
        }), NO_RAISE),
        _metrics("metrics: several rows of one step", _rows([5, 5, 5], lambda s: {
            "train/loss": 1.5, "val/loss": 1.7,
        }), "several rows may share a step: merge them or keep each"),
        _metrics("metrics: out-of-order and repeated steps",
                 _rows([9, 6, 6, 8, 1], lambda s: {"train/loss": 1.0 / (s + 1)}),
                 "a step can be lower than one already seen (a resume from an earlier checkpoint): keep it or "
                 "report it once, never raise"),
        _metrics("metrics: a wide row (1,500 keys)",
                 _rows([10], lambda s: {f"layer_{i:04d}/grad_norm": i * 1e-3 for i in range(1500)}),
                 "split a batch to the backend's own request limits"),
        _metrics("metrics: a 10,000-row batch",
                 _rows(range(100, 10_100), lambda s: {"train/loss": 1.0 / s}),
                 "a lagging backend gets up to thousands of rows at once: split them to the backend's limits"),
        _metrics("metrics: the same rows delivered again",
                 _rows([0], lambda s: {"train/loss": 2.5, "train/lr": 0.001}),
                 "delivery is at least once: a batch can arrive again after a crash or a retry"),
    ]


def _media_cases(files: Inputs) -> list[Case]:
    now = time.time()
    png, model_digest, folder_digest = files.png, files.model_digest, files.folder_digest
    return [
        _image("image", ImageEvent(
            "samples/gradient", 10, now, png, caption="a gradient, ünïcode caption", width=16, height=8)),
        _image("image: unicode key and no caption", ImageEvent(
            "imágenes/curva 1", 11, now, png, caption=None, width=16, height=8), NO_RAISE),
        _histogram("histogram", HistogramEvent(
            "weights/layer0", 10, now, edges=(-1.0, -0.5, 0.0, 0.5, 1.0), counts=(1.0, 4.0, 4.0, 1.0),
            min=-0.9, max=0.95, num=10, sum=0.3, sum_squares=3.1)),
        _histogram("histogram: no finite values", HistogramEvent(
            "grads/all_nan", 11, now, edges=(0.0, 1.0), counts=(0.0,), min=0.0, max=0.0, num=0, sum=0.0,
            sum_squares=0.0), "a histogram of only NaN arrives empty (num 0): " + NO_RAISE),
        _histogram("histogram: 512 buckets", HistogramEvent(
            "weights/fine", 12, now, edges=tuple(i / 512 for i in range(513)), counts=tuple([2.0] * 512),
            min=0.0, max=1.0, num=1024, sum=512.0, sum_squares=341.5)),
        _table("table", TableEvent(
            "eval/predictions", 10, now, columns=("id", "text", "score", "ok", "note"),
            rows=((1, "hola mundo", 0.9, True, None), (2, "日本語 | pipes\nand newlines", 0.1, False, "nan")))),
        _table("table: no rows", TableEvent("eval/empty", 11, now, columns=("a", "b"), rows=()), NO_RAISE),
        _text("text: markdown and unicode", TextEvent(
            "notes/summary", 10, now, "# Résumé\n\n*loss* went **down** 📉\n\n| a | b |\n|---|---|\n| 1 | 2 |")),
        _text("text: an empty string", TextEvent("notes/empty", 11, now, ""), NO_RAISE),
        _artifact("artifact: a file", ArtifactEvent(
            files.model, "model", "model.bin", 10, now, model_digest, "weights", {"epoch": 1})),
        _artifact("artifact: a directory", ArtifactEvent(
            files.folder, "model", "checkpoint-10", 10, now, folder_digest, None, {})),
        _artifact("artifact: the same file again", ArtifactEvent(
            files.model, "model", "model.bin", 12, now, model_digest, "weights", {"epoch": 1}),
            "an artifact can be offered again (a replay): skip it when the digest is already there"),
        _alert("alert: info", AlertEvent("Training started", "step 0", "info", 0, now)),
        _alert("alert: warn", AlertEvent("High loss ⚠", "loss spiked to 12.5 at step 10", "warn", 10, now)),
        _alert("alert: error", AlertEvent("Diverged", "loss is NaN", "error", 11, now)),
    ]


def restart_cases(info: RunInfo, options: Any, identity: Mapping[str, str]) -> list[Case]:
    """A second instance, started with the identity the first returned and the
    checkpoint of its last flush (resume, sync); it ends with a gap."""
    return [
        _start("restart after a failed run: start with the saved identity", info, options, identity,
               "resume_state is what tracker_start returned before, with the checkpoint of the last "
               "tracker_flush: reopen the same backend run and drop what was written past the checkpoint"),
        _flush("restart after a failed run: flush right after start"),
        _metrics("restart after a failed run: steps already delivered, again",
                 _rows([5, 6, 7, 8], lambda s: {"train/loss": 1.0 / (s + 1)}),
                 "after a restart the same steps can arrive again"),
        _params("restart after a failed run: params again", {"lr": 0.001, "layers": 4, "resumed": True}),
        _finish("restart after a failed run: finish as failed, incomplete", "failed",
                "complete=False: the backend does not hold every event (it gave up on one); sync delivers the "
                "rest later and finishes again: do not mark the run finished successfully", complete=False),
    ]


def sync_cases(info: RunInfo, options: Any, identity: Mapping[str, str]) -> list[Case]:
    """A third instance that is started and finished with nothing to deliver."""
    return [
        _start("sync of a closed run: start with the saved identity", info, options, identity),
        _flush("sync of a closed run: flush right after start"),
        _finish("sync of a closed run: finish as killed with no events", "killed",
                "sync closes a run whose process died as 'killed', possibly with nothing left to deliver; "
                "complete=True again after an incomplete finish"),
    ]


# --------------------------------------------------------------------------- #
# What the end-to-end runs log
# --------------------------------------------------------------------------- #


def log_every_kind(run: Run, root: Path, steps: range, sent: Sent | None = None, case: str = "") -> dict[str, int]:
    """One short run with every kind of event the Run API makes; return what
    ``finish`` left undelivered. What it logs is noted in ``sent`` (under
    ``case``), as a backend receives it, for the read-back."""
    from foundry_track.params import flatten, redact

    note = sent if sent is not None else Sent()
    params = {"lr": 0.0005, "model": {"name": "tiny"}, "hf_token": "hidden", "seed": None}
    run.log_params(params)
    for key, value in flatten(redact(params)).items():
        note.param(key, value, case, MUST)
    for step in steps:
        values: dict[str, float | int] = {"train/loss": 1.0 / (step + 1), "train/ñandú": float(step),
                                          "train/count": step}
        if step == 5:
            values["train/grad_norm"] = math.nan
        if step == 6:
            values["train/grad_norm"] = math.inf
        run.log(values, step=step)
        note_metrics(note, step, values, case)
    run.log({"train/loss": 0.75}, step=3)  # lower than steps already logged
    note_metrics(note, 3, {"train/loss": 0.75}, case)
    run.log_text("notes/summary", "# Résumé\nall good 📉")
    run.log_table("eval/predictions", ["id", "text", "score"], [[1, "hola", 0.9], [2, "日本語", math.nan]])
    run.alert("Conformance", "an alert from the conformance kit", "warn")
    artifact = root / "e2e-artifact.txt"
    artifact.write_text("artifact body\n")
    run.log_artifact(artifact, type="dataset", name="e2e-artifact")
    note.media_key("tracker_log_text", "notes/summary", case, MUST)
    note.media_key("tracker_log_table", "eval/predictions", case, MUST)
    note.alert("Conformance", case, MUST)
    note.artifact("e2e-artifact", case, MUST)
    if importlib.util.find_spec("numpy") is not None:
        import numpy as np

        run.log_image("samples/noise", np.linspace(0.0, 1.0, 8 * 8 * 3).reshape(8, 8, 3), caption="noise")
        run.log_histogram("weights/w", np.linspace(-1.0, 1.0, 1000))
        note.media_key("tracker_log_image", "samples/noise", case, MUST)
        note.media_key("tracker_log_histogram", "weights/w", case, MUST)
    return run.finish()


def note_metrics(sent: Sent, step: int, values: Mapping[str, float | int], case: str) -> None:
    """Note one ``run.log`` call in ``sent``: NaN, inf and non-ASCII keys are
    data a backend may skip with a warning (as in the hook cases)."""
    for key, value in values.items():
        plain = key.isascii() and (not isinstance(value, float) or math.isfinite(value))
        sent.metric(step, key, value, case, MUST if plain else MAY_SKIP)
