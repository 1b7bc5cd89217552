"""The conformance kit: run it against your backend and it says what the backend
gets wrong, naming the hook and the case.

Use it from your backend's own tests::

    from foundry_track.testing import check_backend

    def test_my_backend_conforms(tmp_path):
        check_backend("mytracker", {"some_option": 1}, tmp_path).assert_ok()

``check_backend`` runs these parts, and its report says which ran and which
were skipped, and why (``report.parts``):

1. **Contract** — the plugin loads into a PluginManager (no misspelled or
   unmarked hooks), no hook argument has a default, ``tracker_unavailable``
   and ``tracker_options_model`` return what the hookspec says, and the
   options validate.
2. **Hook cases** — a fresh instance of the backend gets every hook it implements,
   called on one thread of its own as the dispatcher does, with the edge cases
   the dispatcher really delivers: an empty batch, unicode keys, NaN and inf,
   a 10,000-row batch, out-of-order and repeated steps, every media kind,
   artifacts twice, ``tracker_flush`` where the dispatcher calls it (it must
   return None or a checkpoint mapping str to str), ``finish`` twice, and a
   restart after a failed run with the saved identity and the checkpoint of
   the last flush (what ``resume`` and ``foundry-track sync`` do) that ends
   with ``complete=False``. Each call must return within ``hook_timeout``
   seconds.
3. **End to end** (when the backend is given by its entry-point name) — a run
   through :func:`foundry_track.init` with ``strict=True``, a resume that ends
   ``failed``, and a ``foundry-track sync`` that replays every event the
   backend already holds (a crash between a hook's return and the journal
   noting it).
4. **Process delivery** — the same run with ``tracking.delivery: process``,
   the backend in a fresh interpreter found through its entry point.
5. **Read-back** (when ``readback=`` is given) — after the hook cases and each
   end-to-end run, the author's function says what the tracker holds for the
   run, and the kit checks that every metric value it sent is there (once,
   where it was delivered once), every param, and the media keys, artifact
   names and alert titles of the hooks the backend implements. Without it
   the kit only knows that hooks returned, not that anything was stored.

Nothing here imports a tracker SDK, torch or numpy at module import.

The modules: :mod:`~foundry_track.testing.cases` (what each case sends),
:mod:`~foundry_track.testing.contract` (part 1),
:mod:`~foundry_track.testing.driver` (parts 2 to 4, and when to read back),
:mod:`~foundry_track.testing.readback` (part 5: what is compared),
:mod:`~foundry_track.testing.report` (what was found).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from foundry_track.testing import contract as _contract
from foundry_track.testing import driver as _driver
from foundry_track.testing import report as _report
from foundry_track.testing.readback import ReadBack, Stored
from foundry_track.testing.report import CaseResult, ConformanceReport, Part, Problem

__all__ = ["CaseResult", "ConformanceReport", "Part", "Problem", "ReadBack", "Stored", "check_backend"]


def check_backend(
    backend: str | Any,
    options: Mapping[str, Any] | None = None,
    tmp_path: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    hook_timeout: float = 120.0,
    end_to_end: bool | None = None,
    readback: ReadBack | None = None,
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
        since a run selects backends by entry-point name). ``True`` with a
        class is a problem: the end-to-end part cannot run.
    :param readback: ``readback(identity)`` returns what the tracker holds for
        the run whose ``tracker_start`` returned ``identity``: a
        :class:`Stored`, or a mapping with its keys (``metrics``, ``params``,
        ``media``, ``artifacts``, ``alerts``). Without it the kit checks that
        hooks return, not that the tracker stored anything.

    The report's ``problems`` name the case and the hook; ``parts`` say which
    parts ran and why the others were skipped; ``assert_ok()`` raises
    ``AssertionError`` with all the problems.
    """
    root = Path(tmp_path) if tmp_path is not None else Path(tempfile.mkdtemp(prefix="foundry-track-conformance-"))
    root = root / "conformance"
    root.mkdir(parents=True, exist_ok=True)
    name = name or (backend if isinstance(backend, str) else _contract.plugin_name(backend))
    checker = _report.Checker(name, root, hook_timeout, ConformanceReport(name, root))
    raw_options = dict(options or {})
    reader = _driver.ReadBackCheck(readback) if readback is not None else None
    loaded = _contract.load(checker, backend, raw_options)
    checker.part("contract", True, f"{len(checker.report.implemented)} hook(s) implemented"
                 + ("; the options validate" if loaded is not None else "; the backend cannot be driven"))
    if loaded is None:
        for part in ("hook cases", "end to end", "process delivery", "read-back"):
            checker.part(part, False, "not run: the contract check failed (see the problems)")
        return checker.report
    _driver.drive_hooks(checker, loaded, reader)
    if not isinstance(backend, str):
        why = ("a run selects backends by entry-point name, and this backend was given as "
               f"{type(backend).__name__ if not isinstance(backend, type) else 'a class'}: pass the name of "
               "the installed distribution's entry point")
        if end_to_end:
            checker.problem("end to end", None, f"end_to_end=True, but the part cannot run: {why}")
        checker.part("end to end", False, why)
        checker.part("process delivery", False, why)
    elif end_to_end is None or end_to_end:
        _driver.end_to_end(checker, raw_options, reader)
    else:
        checker.part("end to end", False, "end_to_end=False")
        checker.part("process delivery", False, "end_to_end=False")
    if reader is None:
        checker.part("read-back", False, "no readback= given: the kit checked that the hooks return, not that "
                     "the tracker holds what they received")
    else:
        checker.part("read-back", bool(reader.checked), reader.note())
    return checker.report
