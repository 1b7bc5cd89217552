"""The conformance kit: run it against your backend and it says what the backend
gets wrong, naming the hook and the case.

Use it from your backend's own tests::

    from foundry_track.testing import check_backend

    def test_my_backend_conforms(tmp_path):
        check_backend("mytracker", {"some_option": 1}, tmp_path).assert_ok()

``check_backend`` does three things:

1. **Contract** — the plugin loads into a PluginManager (no misspelled or
   unmarked hooks), no hook argument has a default, ``tracker_unavailable``
   and ``tracker_options_model`` return what the hookspec says, and the
   options validate.
2. **Hooks** — a fresh instance of the backend gets every hook it implements,
   called on one thread of its own as the dispatcher does, with the edge cases
   the dispatcher really delivers: an empty batch, unicode keys, NaN and inf,
   a 10,000-row batch, out-of-order and repeated steps, every media kind,
   artifacts twice, ``finish`` twice, and a restart with the saved identity
   after a failed run (what ``resume`` and ``foundry-track sync`` do). Each
   call must return within ``hook_timeout`` seconds.
3. **End to end** (when the backend is given by its entry-point name) — a run
   through :func:`foundry_track.init` with ``strict=True``, a resume that ends
   ``failed``, and a ``foundry-track sync`` that replays every event the
   backend already holds (a crash between a hook's return and the journal
   noting it).

Nothing here imports a tracker SDK, torch or numpy at module import.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import queue
import secrets
import string
import struct
import tempfile
import threading
import time
import traceback
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Final, Mapping, Sequence

from foundry_track.events import (
    AlertEvent,
    ArtifactEvent,
    HistogramEvent,
    ImageEvent,
    MetricRow,
    RunInfo,
    TableEvent,
    TextEvent,
)

__all__ = ["check_backend", "ConformanceReport", "Problem", "CaseResult"]

_DISCOVERY_HOOKS: Final = ("tracker_options_model", "tracker_unavailable")


# --------------------------------------------------------------------------- #
# The report
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Problem:
    """One thing the backend got wrong: in which case, in which hook, and why."""

    case: str
    hook: str | None
    message: str
    details: str = ""  # the traceback, when there is one

    def __str__(self) -> str:
        return f"[{self.case}] {self.hook or 'backend'}: {self.message}"


@dataclass(frozen=True)
class CaseResult:
    """One hook call the kit made, and how long it took."""

    case: str
    hook: str
    seconds: float
    ok: bool


@dataclass
class ConformanceReport:
    """What :func:`check_backend` found. ``problems`` empty means the backend conforms."""

    backend: str
    dir: Path
    implemented: frozenset[str] = frozenset()
    results: list[CaseResult] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)  # worth fixing, not a contract violation
    skipped: list[str] = field(default_factory=list)  # cases that did not apply, and why

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def cases(self) -> list[str]:
        """Every case that called at least one hook, in order."""
        return list(dict.fromkeys(r.case for r in self.results))

    def problems_with(self, *, hook: str | None = None, case: str | None = None) -> list[Problem]:
        """Problems of one hook and/or whose case name contains ``case``."""
        return [p for p in self.problems
                if (hook is None or p.hook == hook) and (case is None or case in p.case)]

    def format(self) -> str:
        lines = [f"backend {self.backend!r}: {len(self.problems)} problem(s) in {len(self.results)} hook calls "
                 f"({len(self.cases)} cases; files in {self.dir})"]
        for problem in self.problems:
            lines.append(f"  - {problem}")
            if problem.details:
                lines.extend("      " + line for line in problem.details.rstrip().splitlines()[-6:])
        lines += [f"  advice: {a}" for a in self.advice]
        lines += [f"  skipped: {s}" for s in self.skipped]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def assert_ok(self) -> ConformanceReport:
        """Raise ``AssertionError`` listing every problem, else return the report."""
        if self.problems:
            raise AssertionError(self.format())
        return self


# --------------------------------------------------------------------------- #
# Data for the cases (plain Python: no numpy, no PIL)
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
class _Case:
    name: str
    hook: str
    kwargs: Mapping[str, Any]
    hint: str = ""


_NO_RAISE: Final = ("a backend must not raise for data it can receive: store it, or skip it with one "
                    "warning (logging/warnings), never an exception")


@dataclass(frozen=True)
class _Inputs:
    """Files the cases read from disk: a PNG, an artifact file and an artifact directory."""

    png: Path
    model: Path
    model_digest: str
    folder: Path
    folder_digest: str


def _files(root: Path) -> _Inputs:
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
    return _Inputs(png, model, digest_path(model), folder, digest_path(folder))


def _new_run_cases(info: RunInfo, options: Any, files: _Inputs) -> list[_Case]:
    now = time.time()
    nan, inf = math.nan, math.inf
    png, model_digest, folder_digest = files.png, files.model_digest, files.folder_digest
    return [
        _Case("start a new run", "tracker_start", {"run": info, "options": options, "resume_state": {}}),
        _Case("params of every value type", "tracker_log_params", {"params": {
            "lr": 0.001, "layers": 4, "amp": True, "scheduler": "cosine", "warmup": None,
            "model/hidden_size": 128, "data/ñandú_ü": "日本語", "wandb/api_key": "***",
            "long_value": "x" * 10_000,
        }}, _NO_RAISE),
        _Case("params: an empty mapping", "tracker_log_params", {"params": {}}, _NO_RAISE),
        _Case("params: a value changed by a later call", "tracker_log_params", {"params": {"lr": 0.0005}},
              "log_params may be called more than once; a later value replaces the earlier one where the "
              "backend allows it, else keep the first and say so once"),
        _Case("metrics: an empty batch", "tracker_log_metrics", {"rows": []}, _NO_RAISE),
        _Case("metrics: one row", "tracker_log_metrics",
              {"rows": _rows([0], lambda s: {"train/loss": 2.5, "train/lr": 0.001})}),
        _Case("metrics: unicode keys", "tracker_log_metrics", {"rows": _rows([1], lambda s: {
            "pérdida/entrenamiento": 2.4, "损失": 2.3, "train/loss 🔥": 2.2, "a key with spaces": 1.0,
            "weird:chars|<>?*": 0.5, "x/y/z/deep/key": 0.25,
        })}, _NO_RAISE),
        _Case("metrics: NaN and inf", "tracker_log_metrics", {"rows": _rows([2, 3], lambda s: {
            "train/loss": nan if s == 2 else inf, "train/grad_norm": -inf, "train/ok": 1.0,
        })}, "NaN and inf reach backends (a diverged loss): " + _NO_RAISE),
        _Case("metrics: ints, huge, tiny and negative zero", "tracker_log_metrics", {"rows": _rows([4], lambda s: {
            "count/int": 7, "count/big_int": 2**53 + 1, "huge": 1e300, "tiny": 1e-300, "neg_zero": -0.0,
        })}, _NO_RAISE),
        _Case("metrics: several rows of one step", "tracker_log_metrics", {"rows": _rows([5, 5, 5], lambda s: {
            "train/loss": 1.5, "val/loss": 1.7,
        })}, "several rows may share a step: merge them or keep each"),
        _Case("metrics: out-of-order and repeated steps", "tracker_log_metrics",
              {"rows": _rows([9, 6, 6, 8, 1], lambda s: {"train/loss": 1.0 / (s + 1)})},
              "a step can be lower than one already seen (a resume from an earlier checkpoint): keep it or "
              "report it once, never raise"),
        _Case("metrics: a wide row (1,500 keys)", "tracker_log_metrics",
              {"rows": _rows([10], lambda s: {f"layer_{i:04d}/grad_norm": i * 1e-3 for i in range(1500)})},
              "split a batch to the backend's own request limits"),
        _Case("metrics: a 10,000-row batch", "tracker_log_metrics",
              {"rows": _rows(range(100, 10_100), lambda s: {"train/loss": 1.0 / s})},
              "a lagging backend gets up to thousands of rows at once: split them to the backend's limits"),
        _Case("metrics: the same rows delivered again", "tracker_log_metrics",
              {"rows": _rows([0], lambda s: {"train/loss": 2.5, "train/lr": 0.001})},
              "delivery is at least once: a batch can arrive again after a crash or a retry"),
        _Case("image", "tracker_log_image", {"image": ImageEvent(
            "samples/gradient", 10, now, png, caption="a gradient, ünïcode caption", width=16, height=8)}),
        _Case("image: unicode key and no caption", "tracker_log_image", {"image": ImageEvent(
            "imágenes/curva 1", 11, now, png, caption=None, width=16, height=8)}, _NO_RAISE),
        _Case("histogram", "tracker_log_histogram", {"histogram": HistogramEvent(
            "weights/layer0", 10, now, edges=(-1.0, -0.5, 0.0, 0.5, 1.0), counts=(1.0, 4.0, 4.0, 1.0),
            min=-0.9, max=0.95, num=10, sum=0.3, sum_squares=3.1)}),
        _Case("histogram: no finite values", "tracker_log_histogram", {"histogram": HistogramEvent(
            "grads/all_nan", 11, now, edges=(0.0, 1.0), counts=(0.0,), min=0.0, max=0.0, num=0, sum=0.0,
            sum_squares=0.0)}, "a histogram of only NaN arrives empty (num 0): " + _NO_RAISE),
        _Case("histogram: 512 buckets", "tracker_log_histogram", {"histogram": HistogramEvent(
            "weights/fine", 12, now, edges=tuple(i / 512 for i in range(513)), counts=tuple([2.0] * 512),
            min=0.0, max=1.0, num=1024, sum=512.0, sum_squares=341.5)}),
        _Case("table", "tracker_log_table", {"table": TableEvent(
            "eval/predictions", 10, now, columns=("id", "text", "score", "ok", "note"),
            rows=((1, "hola mundo", 0.9, True, None), (2, "日本語 | pipes\nand newlines", 0.1, False, "nan")))}),
        _Case("table: no rows", "tracker_log_table",
              {"table": TableEvent("eval/empty", 11, now, columns=("a", "b"), rows=())}, _NO_RAISE),
        _Case("text: markdown and unicode", "tracker_log_text", {"text": TextEvent(
            "notes/summary", 10, now, "# Résumé\n\n*loss* went **down** 📉\n\n| a | b |\n|---|---|\n| 1 | 2 |")}),
        _Case("text: an empty string", "tracker_log_text", {"text": TextEvent("notes/empty", 11, now, "")}, _NO_RAISE),
        _Case("artifact: a file", "tracker_log_artifact", {"artifact": ArtifactEvent(
            files.model, "model", "model.bin", 10, now, model_digest, "weights", {"epoch": 1})}),
        _Case("artifact: a directory", "tracker_log_artifact", {"artifact": ArtifactEvent(
            files.folder, "model", "checkpoint-10", 10, now, folder_digest, None, {})}),
        _Case("artifact: the same file again", "tracker_log_artifact", {"artifact": ArtifactEvent(
            files.model, "model", "model.bin", 12, now, model_digest, "weights", {"epoch": 1})},
              "an artifact can be offered again (a replay): skip it when the digest is already there"),
        _Case("alert: info", "tracker_alert", {"alert": AlertEvent("Training started", "step 0", "info", 0, now)}),
        _Case("alert: warn", "tracker_alert",
              {"alert": AlertEvent("High loss ⚠", "loss spiked to 12.5 at step 10", "warn", 10, now)}),
        _Case("alert: error", "tracker_alert", {"alert": AlertEvent("Diverged", "loss is NaN", "error", 11, now)}),
        _Case("finish", "tracker_finish", {"status": "success"}),
        _Case("finish twice", "tracker_finish", {"status": "success"},
              "tracker_finish can be called again for a closed run (by foundry-track sync): make it harmless"),
    ]


def _restart_cases(info: RunInfo, options: Any, identity: Mapping[str, str]) -> list[_Case]:
    return [
        _Case("restart after a failed run: start with the saved identity", "tracker_start",
              {"run": info, "options": options, "resume_state": dict(identity)},
              "resume_state is what tracker_start returned before: reopen the same backend run"),
        _Case("restart after a failed run: steps already delivered, again", "tracker_log_metrics",
              {"rows": _rows([5, 6, 7, 8], lambda s: {"train/loss": 1.0 / (s + 1)})},
              "after a restart the same steps can arrive again"),
        _Case("restart after a failed run: params again", "tracker_log_params",
              {"params": {"lr": 0.001, "layers": 4, "resumed": True}}),
        _Case("restart after a failed run: finish as failed", "tracker_finish", {"status": "failed"}),
    ]


def _sync_cases(info: RunInfo, options: Any, identity: Mapping[str, str]) -> list[_Case]:
    return [
        _Case("sync of a closed run: start with the saved identity", "tracker_start",
              {"run": info, "options": options, "resume_state": dict(identity)}),
        _Case("sync of a closed run: finish as killed with no events", "tracker_finish", {"status": "killed"},
              "sync closes a run whose process died as 'killed', possibly with nothing left to deliver"),
    ]


# --------------------------------------------------------------------------- #
# Calling hooks on a thread of their own, with a deadline
# --------------------------------------------------------------------------- #


class _Hung(Exception):
    pass


class _Driver:
    """Calls one backend instance's hooks on one thread, as its dispatcher worker would."""

    def __init__(self, hooks: Any, name: str) -> None:
        self._hooks = hooks
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.hung = False
        self._thread = threading.Thread(target=self._loop, name=f"foundry-track-conformance-{name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            hook, kwargs, box, done = item
            try:
                box["result"] = self._hooks._call(hook, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - reported to the caller
                box["error"] = exc
                box["traceback"] = traceback.format_exc()
            done.set()

    def call(self, hook: str, kwargs: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        if self.hung:
            raise _Hung
        box: dict[str, Any] = {}
        done = threading.Event()
        self._calls.put((hook, dict(kwargs), box, done))
        if not done.wait(timeout):
            self.hung = True  # the thread is stuck in the backend; abandon it like the dispatcher does
            raise _Hung
        return box

    def close(self) -> None:
        if not self.hung:
            self._calls.put(None)
            self._thread.join(5)


# --------------------------------------------------------------------------- #
# The checker
# --------------------------------------------------------------------------- #


def _run_id() -> str:
    return "ck" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(6))


class _Checker:
    def __init__(self, backend: Any, options: Mapping[str, Any], root: Path, name: str | None,
                 hook_timeout: float, end_to_end: bool | None) -> None:
        self.backend = backend
        self.raw_options = dict(options)
        self.root = root
        self.name = name or (backend if isinstance(backend, str) else _plugin_name(backend))
        self.hook_timeout = hook_timeout
        self.end_to_end = isinstance(backend, str) if end_to_end is None else end_to_end
        self.report = ConformanceReport(self.name, root)
        self.factory: Callable[[], Any] | None = None
        self.options: Any = None

    def problem(self, case: str, hook: str | None, message: str, details: str = "") -> None:
        self.report.problems.append(Problem(case, hook, message, details))

    def advise(self, text: str) -> None:
        if text not in self.report.advice:
            self.report.advice.append(text)

    # -- 1. contract -------------------------------------------------------- #

    def load(self) -> bool:
        from foundry_track.plugins import BackendHooks, PluginError, build_plugin_manager, discover, instantiate

        case = "contract"
        if isinstance(self.backend, str):
            info = discover().get(self.backend)
            if info is None:
                self.problem(case, None, f"no backend named {self.backend!r} in the 'foundry_track' entry-point "
                             f"group (found: {', '.join(discover()) or 'none'}); is the distribution installed?")
                return False
            if info.plugin is None:
                self.problem(case, None, info.problem or "the entry point did not load")
                return False
            plugin = info.plugin
            self.factory = lambda: instantiate(info)
        else:
            plugin = self.backend
            self.factory = (lambda: plugin()) if inspect.isclass(plugin) else (lambda: plugin)
        try:
            obj = self.factory()
            pm = build_plugin_manager({self.name: obj}, trace=False)
        except PluginError as exc:
            self.problem(case, None, str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - a constructor that raises
            self.problem(case, None, f"making an instance failed: {type(exc).__name__}: {exc}",
                         traceback.format_exc())
            return False
        hooks = BackendHooks(pm, self.name)
        self.report.implemented = hooks.implemented
        for hook in sorted(hooks.implemented):
            for impl in getattr(pm.hook, hook).get_hookimpls():
                params = inspect.signature(impl.function).parameters.values()
                defaults = [p.name for p in params if p.default is not inspect.Parameter.empty]
                if defaults:
                    self.problem(case, hook, f"hook arguments have defaults ({', '.join(defaults)}): pluggy may "
                                 "not pass them (behaviour differs between pluggy versions); remove the defaults")
        if not hooks.implemented - set(_DISCOVERY_HOOKS) - {"tracker_start", "tracker_finish"}:
            self.advise("the backend implements no tracker_log_* hook and no tracker_alert: it receives no events")
        return self._discovery(hooks)

    def _discovery(self, hooks: Any) -> bool:
        from pydantic import BaseModel, ValidationError

        from foundry_track.plugins import NoOptions

        case = "contract"
        try:
            reason = hooks.unavailable()
        except Exception as exc:  # noqa: BLE001
            self.problem(case, "tracker_unavailable", f"raised {type(exc).__name__}: {exc}", traceback.format_exc())
            return False
        if reason is not None:
            if not isinstance(reason, str):
                self.problem(case, "tracker_unavailable", f"must return None or a str, returned {reason!r}")
            else:
                if "pip install" not in reason:
                    self.advise("tracker_unavailable's reason should contain the exact install command, "
                                "e.g. pip install 'foundry-track[NAME]'")
                self.problem(case, "tracker_unavailable", f"the backend cannot run here: {reason}")
            return False
        try:
            model = hooks.options_model()
        except Exception as exc:  # noqa: BLE001
            self.problem(case, "tracker_options_model", f"raised {type(exc).__name__}: {exc}", traceback.format_exc())
            return False
        if model is None:
            model = NoOptions
        elif not (inspect.isclass(model) and issubclass(model, BaseModel)):
            self.problem(case, "tracker_options_model", f"must return a pydantic BaseModel subclass, returned {model!r}")
            return False
        else:
            undocumented = [n for n, f in model.model_fields.items() if not f.description]
            if undocumented:
                self.advise(f"options without a description ({', '.join(undocumented)}): give every field "
                            "Field(description=...) so users can read what it does")
            if model.model_config.get("extra") != "forbid":
                self.advise("the options model accepts unknown keys: declare "
                            "model_config = ConfigDict(extra='forbid') so a typo is reported")
        try:
            self.options = model.model_validate(self.raw_options)
        except ValidationError as exc:
            self.problem(case, "tracker_options_model", f"the options given to the kit do not validate: {exc}")
            return False
        return True

    # -- 2. hooks ----------------------------------------------------------- #

    def hooks(self) -> None:
        from foundry_track.plugins import BackendHooks, build_plugin_manager

        factory = self.factory
        assert factory is not None
        run_dir = self.root / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        files = _files(self.root / "inputs")
        # What init(params=...) hands to tracker_start: nested, secrets already redacted.
        config = {"lr": 0.001, "model": {"layers": 2, "name": "tiny"}, "data": {"files": ["a.txt", "ñ.txt"]},
                  "wandb_api_key": "***", "seed": None}
        info = RunInfo(id=_run_id(), name="conformance", project="foundry-track-conformance", entity=None,
                       tags=("conformance", "ünïcode-tag"), notes="foundry_track.testing.check_backend",
                       group="conformance-kit", config=config, dir=run_dir, resumed=False)

        def instance(cases: list[_Case]) -> Mapping[str, str] | None:
            hooks = BackendHooks(build_plugin_manager({self.name: factory()}, trace=False), self.name)
            driver = _Driver(hooks, self.name)
            try:
                return self._drive(driver, hooks.implemented, cases)
            finally:
                driver.close()

        identity = instance(_new_run_cases(info, self.options, files))
        if identity is None:
            return
        resumed = replace(info, resumed=True)
        if instance(_restart_cases(resumed, self.options, identity)) is None:
            return
        instance(_sync_cases(resumed, self.options, identity))

    def _drive(self, driver: _Driver, implemented: frozenset[str], cases: list[_Case]) -> Mapping[str, str] | None:
        """Run the cases on one instance; return the start identity, or None if the instance is unusable."""
        identity: Mapping[str, str] = {}
        for case in cases:
            if case.hook not in implemented:
                if case.hook != "tracker_start" and f"{case.hook} (not implemented)" not in self.report.skipped:
                    self.report.skipped.append(f"{case.hook} (not implemented)")
                continue
            started = time.perf_counter()
            try:
                box = driver.call(case.hook, case.kwargs, self.hook_timeout)
            except _Hung:
                self.problem(case.name, case.hook, f"did not return within {self.hook_timeout:g} s: a hook must not "
                             "block forever (use timeouts on network calls)")
                self.report.results.append(CaseResult(case.name, case.hook, time.perf_counter() - started, False))
                return None
            seconds = time.perf_counter() - started
            error = box.get("error")
            self.report.results.append(CaseResult(case.name, case.hook, seconds, error is None))
            if error is not None:
                hint = f" ({case.hint})" if case.hint else ""
                self.problem(case.name, case.hook, f"raised {type(error).__name__}: {error}{hint}",
                             box.get("traceback", ""))
                if case.hook == "tracker_start":
                    self.report.skipped.append(f"the cases after {case.name!r} (tracker_start failed)")
                    return None
                continue
            if case.hook == "tracker_start":
                result = box.get("result")
                if result is None:
                    identity = {}
                elif not isinstance(result, Mapping):
                    self.problem(case.name, case.hook, f"must return a mapping of str to str or None, "
                                 f"returned {type(result).__name__}")
                    identity = {}
                else:
                    identity = {str(k): str(v) for k, v in result.items()}
                    if any(not isinstance(k, str) or not isinstance(v, str) for k, v in result.items()):
                        self.advise("tracker_start's identity should map str to str (other values are "
                                    "converted with str())")
        return identity

    # -- 3. end to end ---------------------------------------------------- #

    def end_to_end_run(self) -> None:
        import foundry_track
        from foundry_track.journal import JOURNAL_FILE, Journal

        name = self.name
        cfg = {
            "project": "foundry-track-conformance", "run_name": "conformance-e2e",
            "tags": ["conformance", "ünïcode-tag"], "group": "conformance-kit",
            "dir": str(self.root / "runs"), "backends": {name: self.raw_options}, "fallback": None,
            "strict": True, "flush_timeout": self.hook_timeout, "start_timeout": self.hook_timeout,
        }
        case = "end to end: a new run through foundry_track.init (strict)"
        made = self._logged_run(case, cfg, range(0, 30),
                                params={"lr": 0.001, "model": {"layers": 2}, "api_key": "hidden"})
        if made is None or made[1] is None:
            return
        run_dir = made[0]
        self._check_delivered(case, run_dir, made[1])

        case = "end to end: resume the run, log lower steps, end as failed"
        started = time.perf_counter()
        with _failures() as failures:
            try:
                run = foundry_track.init(cfg, resume=run_dir)
            except Exception as exc:  # noqa: BLE001
                self.problem(case, None, f"foundry_track.init(resume=...) failed: {type(exc).__name__}: {exc}",
                             traceback.format_exc())
                return

            def resumed() -> dict[str, int]:
                for step in range(20, 40):  # 20..29 were logged before the "crash"
                    run.log({"train/loss": 1.0 / (step + 1), "train/ñandú": float(step)}, step=step)
                return run.finish("failed")

            undelivered = self._guarded(case, failures, resumed)
        self._timed(case, "foundry_track.init", started)
        if undelivered is None:
            return
        self._check_delivered(case, run_dir, undelivered)

        case = "end to end: foundry-track sync replays every event the backend already has"
        journal = Journal(run_dir / JOURNAL_FILE)
        journal.set_position(name, 0)  # as if the process died after each hook returned, before the commit
        journal.close()
        box: dict[str, Any] = {}

        def replay() -> None:
            try:
                box["left"] = foundry_track.sync(run_dir, backend=name)
            except BaseException as exc:  # noqa: BLE001
                box["error"], box["traceback"] = exc, traceback.format_exc()

        started = time.perf_counter()
        with _failures() as failures:
            thread = threading.Thread(target=replay, name="foundry-track-conformance-sync", daemon=True)
            thread.start()
            thread.join(self.hook_timeout * 2)
        self._report_failures(case, failures)
        self._timed(case, "foundry_track.sync", started)
        if thread.is_alive():
            self.problem(case, None, f"foundry_track.sync did not return within {self.hook_timeout * 2:g} s")
        elif "error" in box:
            self.problem(case, None, f"sync raised {type(box['error']).__name__}: {box['error']}", box["traceback"])
        elif box.get("left"):
            self.problem(case, None, f"events left undelivered after sync: {box['left']}")

        self.end_to_end_in_a_delivery_process(cfg)

    def end_to_end_in_a_delivery_process(self, cfg: dict[str, Any]) -> None:
        """The same run with ``tracking.delivery: process``: the backend in a fresh
        interpreter, found through its entry point, options sent as JSON."""
        case = "end to end: the backend in the delivery process (tracking.delivery: process)"
        errors: list[str] = []
        made = self._logged_run(case, {**cfg, "run_name": "conformance-e2e-process", "delivery": "process"},
                                range(0, 10), errors=errors)
        if any("not available in the delivery process" in message for message in errors):
            self.advise("With tracking.delivery: process the backend runs in a fresh interpreter, which did not "
                        "find it: install it as a distribution (its entry point), or put it on PYTHONPATH.")
            return
        if made is None or made[1] is None:
            return
        self._check_delivered(case, made[0], made[1])

    def _logged_run(self, case: str, cfg: Mapping[str, Any], steps: range, *, errors: list[str] | None = None,
                    **init_kwargs: Any) -> tuple[Path, dict[str, int] | None] | None:
        """A run through ``foundry_track.init`` that logs every kind of event at
        ``steps`` and finishes: (run dir, undelivered, or None if it raised), or
        None when ``init`` itself failed. Error messages logged meanwhile are
        added to ``errors``."""
        import foundry_track

        started = time.perf_counter()
        with _failures() as failures, _errors() as logged:
            try:
                run = foundry_track.init(dict(cfg), **init_kwargs)
            except Exception as exc:  # noqa: BLE001
                self.problem(case, None, f"foundry_track.init failed: {type(exc).__name__}: {exc}",
                             traceback.format_exc())
                return None
            run_dir = run.dir
            assert run_dir is not None
            undelivered = self._guarded(case, failures, lambda: _log_every_kind(run, self.root, steps))
        self._timed(case, "foundry_track.init", started)
        if errors is not None:
            errors.extend(logged)
        return run_dir, undelivered

    def _timed(self, case: str, what: str, started: float) -> None:
        ok = not self.report.problems_with(case=case)
        self.report.results.append(CaseResult(case, what, time.perf_counter() - started, ok))

    def _guarded(self, case: str, failures: list[logging.LogRecord], body: Callable[[], dict[str, int]]
                 ) -> dict[str, int] | None:
        from foundry_track.dispatcher import BackendError

        try:
            return body()
        except BackendError as exc:
            self._report_failures(case, failures)
            if not self.report.problems_with(case=case):
                self.problem(case, None, f"the backend failed: {exc}", traceback.format_exc())
        except Exception as exc:  # noqa: BLE001
            self.problem(case, None, f"the run raised {type(exc).__name__}: {exc}", traceback.format_exc())
        return None

    def _report_failures(self, case: str, failures: list[logging.LogRecord]) -> None:
        for record in failures:
            hook, tb = _failed_hook(record)
            last = tb.strip().splitlines()[-1] if tb.strip() else record.getMessage()
            self.problem(case, hook, f"raised {last}", tb)

    def _check_delivered(self, case: str, run_dir: Path, undelivered: Mapping[str, int]) -> None:
        from foundry_track.journal import JOURNAL_FILE, Journal

        if undelivered:
            self.problem(case, None, f"events not delivered when the run finished: {dict(undelivered)}")
            return
        journal = Journal(run_dir / JOURNAL_FILE, readonly=True)
        position, last = journal.position(self.name), journal.refresh()
        if position != last:
            self.problem(case, None, f"the journal says the backend has events up to {position} of {last}")


_FAILED_PREFIX: Final = "backend %r failed in %s"


class _FailureHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith(_FAILED_PREFIX):
            self.records.append(record)


class _failures:
    """Collect the dispatcher's "backend X failed in HOOK" reports while a block runs."""

    def __enter__(self) -> list[logging.LogRecord]:
        self.handler = _FailureHandler()
        logging.getLogger("foundry_track").addHandler(self.handler)
        return self.handler.records

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger("foundry_track").removeHandler(self.handler)


class _ErrorHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class _errors:
    """Collect every error message of foundry_track's loggers while a block runs
    (the delivery process's arrive as plain records)."""

    def __enter__(self) -> list[str]:
        self.handler = _ErrorHandler()
        logging.getLogger("foundry_track").addHandler(self.handler)
        return self.handler.messages

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger("foundry_track").removeHandler(self.handler)


def _failed_hook(record: logging.LogRecord) -> tuple[str | None, str]:
    args = record.args if isinstance(record.args, tuple) else ()
    hook = str(args[1]) if len(args) > 1 else None
    tb = str(args[-1]) if args else ""
    return hook, tb


def _log_every_kind(run: Any, root: Path, steps: range) -> dict[str, int]:
    """One short run with every kind of event the Run API makes."""
    import importlib.util

    run.log_params({"lr": 0.0005, "model": {"name": "tiny"}, "hf_token": "hidden", "seed": None})
    for step in steps:
        values = {"train/loss": 1.0 / (step + 1), "train/ñandú": float(step), "train/count": step}
        if step == 5:
            values["train/grad_norm"] = math.nan
        if step == 6:
            values["train/grad_norm"] = math.inf
        run.log(values, step=step)
    run.log({"train/loss": 0.75}, step=3)  # lower than steps already logged
    run.log_text("notes/summary", "# Résumé\nall good 📉")
    run.log_table("eval/predictions", ["id", "text", "score"], [[1, "hola", 0.9], [2, "日本語", math.nan]])
    run.alert("Conformance", "an alert from the conformance kit", "warn")
    artifact = root / "e2e-artifact.txt"
    artifact.write_text("artifact body\n")
    run.log_artifact(artifact, type="dataset", name="e2e-artifact")
    if importlib.util.find_spec("numpy") is not None:
        import numpy as np

        run.log_image("samples/noise", np.linspace(0.0, 1.0, 8 * 8 * 3).reshape(8, 8, 3), caption="noise")
        run.log_histogram("weights/w", np.linspace(-1.0, 1.0, 1000))
    return run.finish()


def _plugin_name(plugin: Any) -> str:
    return str(getattr(plugin, "__name__", type(plugin).__name__)).lower()


def check_backend(
    backend: str | Any,
    options: Mapping[str, Any] | None = None,
    tmp_path: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    hook_timeout: float = 120.0,
    end_to_end: bool | None = None,
) -> ConformanceReport:
    """Check a backend against the tracker contract; return what it got wrong.

    :param backend: the backend's entry-point name (``"mytracker"``: found the
        way ``foundry_track.init`` finds it), or its class (or module) for a
        backend that is not installed yet.
    :param options: its options, as written under ``tracking.backends.<name>``.
    :param tmp_path: a folder for the runs the kit makes (a new temporary
        folder when omitted; it is left in place for you to inspect).
    :param name: the name to register the plugin under (default: the entry
        point name, or the class name lowered).
    :param hook_timeout: seconds one hook call may take before the kit reports
        it as blocked.
    :param end_to_end: also run it through ``foundry_track.init`` and
        ``foundry_track.sync`` (default: only when ``backend`` is a name,
        since a run selects backends by entry-point name).

    The report's ``problems`` name the case and the hook; ``assert_ok()``
    raises ``AssertionError`` with all of them.
    """
    root = Path(tmp_path) if tmp_path is not None else Path(tempfile.mkdtemp(prefix="foundry-track-conformance-"))
    root = root / "conformance"
    root.mkdir(parents=True, exist_ok=True)
    checker = _Checker(backend, options or {}, root, name, hook_timeout, end_to_end)
    if not checker.load():
        return checker.report
    checker.hooks()
    if not isinstance(backend, str):
        checker.report.skipped.append("end to end (a run selects backends by entry-point name: pass the name)")
    elif checker.end_to_end:
        checker.end_to_end_run()
    else:
        checker.report.skipped.append("end to end (end_to_end=False)")
    return checker.report
