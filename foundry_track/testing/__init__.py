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

Nothing here imports a tracker SDK, torch or numpy at module import.

The modules: :mod:`~foundry_track.testing.cases` (what each case sends),
:mod:`~foundry_track.testing.contract` (step 1),
:mod:`~foundry_track.testing.driver` (steps 2 and 3),
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
from foundry_track.testing.report import CaseResult, ConformanceReport, Problem

__all__ = ["CaseResult", "ConformanceReport", "Problem", "check_backend"]

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
    name = name or (backend if isinstance(backend, str) else _contract.plugin_name(backend))
    checker = _report.Checker(name, root, hook_timeout, ConformanceReport(name, root))
    raw_options = dict(options or {})
    loaded = _contract.load(checker, backend, raw_options)
    if loaded is None:
        return checker.report
    _driver.drive_hooks(checker, loaded)
    if not isinstance(backend, str):
        checker.skip("end to end (a run selects backends by entry-point name: pass the name)")
    elif end_to_end is None or end_to_end:
        _driver.end_to_end(checker, raw_options)
    else:
        checker.skip("end to end (end_to_end=False)")
    return checker.report
