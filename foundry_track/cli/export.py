"""``foundry-track export``: every metric value of a run, from its journal, as
CSV, JSON, JSON Lines or Parquet: the W&B guide's "Export: download data as
CSV/JSON" without a server.

Two layouts:

* ``long`` (default): one row per logged value, columns ``seq, step, time, key,
  value``. Every step of every metric is there exactly as logged, including
  repeated steps and metrics logged at different steps; ``seq`` is the journal
  event, shared by the values of one ``run.log`` call.
* ``wide``: one row per ``run.log`` call (``seq, step, time`` then one column
  per metric, empty where that call did not log the metric), the shape of W&B's
  CSV export. Needs two passes over the journal (the columns first).

Values keep their type in CSV and JSON (an int stays an int; floats are
written with ``repr`` so they read back bit for bit). NaN and infinities are
written as ``nan``/``inf`` in CSV and as ``NaN``/``Infinity`` in JSON (what
Python's ``json`` and pandas read back); Parquet stores them natively, with
``value`` as float64.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Final, Iterable, Iterator, Literal, Sequence

import foundry_track.cli._common as ui
from foundry_track.errors import FoundryTrackError, MissingDependency

if TYPE_CHECKING:
    from foundry_track.history import MetricPoint

__all__ = ["FORMATS", "LAYOUTS", "ExportError", "export_run", "INSTALL_PARQUET", "add_parser", "run"]

FORMATS: Final = ("csv", "json", "jsonl", "parquet")
LAYOUTS: Final = ("long", "wide")
LONG_COLUMNS: Final = ("seq", "step", "time", "key", "value")
INSTALL_PARQUET: Final = "pip install 'foundry-track[parquet]'"
_PARQUET_BATCH: Final = 100_000
Format = Literal["csv", "json", "jsonl", "parquet"]
Layout = Literal["long", "wide"]


class ExportError(FoundryTrackError, ValueError):
    """Bad export request (unknown format, parquet to stdout, missing folder)."""

    exit_code = 2


def _metric_points(run_dir: Path, keys: Sequence[str] | None) -> Iterator[MetricPoint]:
    from foundry_track.history import metric_points as points  # imported when a command exports, not at startup

    return points(run_dir, keys)


def _wide_rows(run_dir: Path, keys: Sequence[str] | None) -> tuple[list[str], Iterator[Any]]:
    columns: dict[str, None] = {}
    for point in _metric_points(run_dir, keys):  # first pass: the metric columns, in first-logged order
        columns.setdefault(point.key)
    clash = [c for c in ("seq", "step", "time") if c in columns]
    if clash:
        raise ExportError(f"--layout wide: the run logs a metric named {clash[0]!r}, which is also a column of "
                          f"the wide layout; use --layout long (columns seq, step, time, key, value)")

    def rows() -> Iterator[dict[str, Any]]:
        current: dict[str, Any] | None = None
        for point in _metric_points(run_dir, keys):
            if current is None or current["seq"] != point.seq:
                if current is not None:
                    yield current
                current = {"seq": point.seq, "step": point.step, "time": point.time}
            current[point.key] = point.value
        if current is not None:
            yield current

    return ["seq", "step", "time", *columns], rows()


def _long_rows(run_dir: Path, keys: Sequence[str] | None) -> tuple[list[str], Iterator[Any]]:
    # MetricPoint tuples, not dicts: the CSV writer takes them as they are (25% faster).
    return list(LONG_COLUMNS), _metric_points(run_dir, keys)


def _as_dict(row: Any) -> dict[str, Any]:
    return row if isinstance(row, dict) else row._asdict()


def export_run(
    run_dir: str | os.PathLike[str],
    fmt: Format,
    out: str | os.PathLike[str] | None,
    *,
    layout: Layout = "long",
    keys: Sequence[str] | None = None,
) -> int:
    """Write the run's metrics to ``out`` (``None`` or ``-``: stdout, not for
    parquet); return the number of rows written. A file is written atomically."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if layout not in LAYOUTS:
        raise ExportError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    to_stdout = out is None or str(out) == "-"
    if fmt == "parquet" and to_stdout:
        raise ExportError("--format parquet writes a binary file: give -o FILE.parquet")
    path = Path(run_dir)
    columns, rows = (_wide_rows if layout == "wide" else _long_rows)(path, keys)
    if fmt == "parquet":
        writer = _parquet_writer(layout)
        return _atomic(Path(out), lambda tmp: writer(tmp, columns, rows))  # type: ignore[arg-type]
    text_writer = {"csv": _write_csv, "json": _write_json, "jsonl": _write_jsonl}[fmt]
    if to_stdout:
        return text_writer(sys.stdout, columns, rows)

    def write(tmp: Path) -> int:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            return text_writer(fh, columns, rows)

    return _atomic(Path(out), write)  # type: ignore[arg-type]


def _atomic(target: Path, write: Callable[[Path], int]) -> int:
    if not target.parent.is_dir():
        raise ExportError(f"-o {target}: the folder {target.parent} does not exist")
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        count = write(tmp)
        os.replace(tmp, target)  # a failed export never leaves half a file behind
    finally:
        tmp.unlink(missing_ok=True)
    return count


def _write_csv(fh: IO[str], columns: list[str], rows: Iterable[Any]) -> int:
    # csv writes floats with str(), which is repr() in Python 3: exact round trip.
    plain = csv.writer(fh, lineterminator="\n")
    plain.writerow(columns)
    by_name = csv.DictWriter(fh, fieldnames=columns, restval="", lineterminator="\n")
    count = 0
    for row in rows:
        if isinstance(row, dict):
            by_name.writerow(row)
        else:
            plain.writerow(row)
        count += 1
    return count


def _write_json(fh: IO[str], columns: list[str], rows: Iterable[Any]) -> int:
    # Streamed by hand, so a run of millions of values never sits in memory twice.
    fh.write("[")
    count = 0
    for row in rows:
        fh.write(("\n" if count == 0 else ",\n") + json.dumps(_as_dict(row), separators=(",", ":")))
        count += 1
    fh.write("\n]\n" if count else "]\n")
    return count


def _write_jsonl(fh: IO[str], columns: list[str], rows: Iterable[Any]) -> int:
    count = 0
    for row in rows:
        fh.write(json.dumps(_as_dict(row), separators=(",", ":")) + "\n")
        count += 1
    return count


def _parquet_writer(layout: Layout) -> Callable[[Path, list[str], Iterator[Any]], int]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependency(
            f"--format parquet needs pyarrow, which is not installed: {INSTALL_PARQUET} "
            "(mlflow brings it too); or export --format csv"
        ) from None

    def schema(columns: list[str]) -> Any:
        fixed = [pa.field("seq", pa.int64()), pa.field("step", pa.int64()), pa.field("time", pa.float64())]
        if layout == "long":
            return pa.schema([*fixed, pa.field("key", pa.string()), pa.field("value", pa.float64())])
        return pa.schema([*fixed, *(pa.field(c, pa.float64()) for c in columns[3:])])

    def write(tmp: Path, columns: list[str], rows: Iterator[Any]) -> int:
        sch = schema(columns)
        count = 0
        with pq.ParquetWriter(tmp, sch) as writer:
            batch: list[dict[str, Any]] = []
            for row in rows:
                batch.append(_as_dict(row))
                if len(batch) >= _PARQUET_BATCH:
                    writer.write_table(_table(pa, sch, batch))
                    count += len(batch)
                    batch = []
            if batch or count == 0:
                writer.write_table(_table(pa, sch, batch))
                count += len(batch)
        return count

    return write


def _table(pa: Any, schema: Any, rows: list[dict[str, Any]]) -> Any:
    arrays = []
    for f in schema:
        values = [row.get(f.name) for row in rows]
        if pa.types.is_floating(f.type):
            values = [None if v is None else float(v) for v in values]
        arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


# --------------------------------------------------------------------------- #
# The command
# --------------------------------------------------------------------------- #


def add_parser(sub: Any) -> None:
    p = ui.add_command(
        sub, "export", "write every metric value of a run as CSV, JSON, JSON Lines or Parquet",
        "Every metric value of RUN from its journal. Layout long (default): one row per value, columns "
        "seq, step, time, key, value (seq = the run.log call; every step of every metric is kept, "
        "repeated steps included). Layout wide: one row per run.log call, one column per metric (empty "
        "where not logged). Parquet needs pyarrow.",
        "examples:\n  foundry-track export runs/exp0-baseline-a1b2c3d4 --format csv -o exp0.csv\n"
        "  foundry-track export a1b2c3d4 --format parquet --layout wide -o exp0.parquet\n"
        "  foundry-track export a1b2c3d4 --format jsonl --metric train/loss | head",
        run)
    p.add_argument("run", metavar="RUN", help="a run directory, or a run id / name under --dir")
    p.add_argument("--format", "-f", choices=("csv", "json", "jsonl", "parquet"),
                   help="default: from the -o suffix, else csv")
    p.add_argument("-o", "--output", metavar="FILE", help="output file; '-' or omitted: stdout (not for parquet)")
    p.add_argument("--layout", choices=("long", "wide"), default="long", help="long (default) or wide, see above")
    p.add_argument("--metric", "-m", action="append", metavar="KEY", help="only this metric (repeatable)")
    ui.dir_option(p)


def run(args: argparse.Namespace) -> int:
    fmt = args.format
    if fmt is None:
        suffix = Path(args.output).suffix.lower().lstrip(".") if args.output and args.output != "-" else ""
        fmt = suffix if suffix in FORMATS else "csv"
    path = ui.resolve(args.run, args.dir)
    count = export_run(path, fmt, args.output, layout=args.layout, keys=args.metric)
    where = "stdout" if args.output in (None, "-") else args.output
    print(f"foundry-track export: {count:,} rows ({args.layout} layout, {fmt}) to {where}", file=sys.stderr)
    return 0
