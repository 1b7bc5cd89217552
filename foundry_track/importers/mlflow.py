"""Import MLflow runs through ``MlflowClient`` (any tracking URI: a server, a
``sqlite:///`` database, a ``file:`` store).

Kept: every metric's full history (value, step, timestamp; points with the
same step and timestamp become one metrics row), params, user tags (``key``
for an empty value, else ``key=value``; ``mlflow.*`` system tags dropped),
the run name, notes (``mlflow.note.content``), status (FINISHED: success,
FAILED: failed, anything else: killed), start and end times. Artifacts are
*copied*: each top-level artifact path is downloaded into the run directory's
``artifacts/`` folder and logged as one artifact event, since backends read
artifacts from local files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from foundry_track.errors import ConfigError, RunDirError
from foundry_track.events import Status
from foundry_track.importers._core import Event, SourceRun

__all__ = ["runs"]

_KIND = "mlflow"
_STATUS: dict[str, Status] = {"FINISHED": "success", "FAILED": "failed"}


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def runs(tracking_uri: str, experiment: str | None = None, run_id: str | None = None) -> list[SourceRun]:
    """The runs to import: one run (``run_id``), an experiment's runs, or every experiment's."""
    _check_reachable(tracking_uri)
    client = _client(tracking_uri)
    try:
        if run_id is not None:
            found = [client.get_run(run_id)]
        else:
            found = _search(client, experiment)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - MlflowException, requests' errors
        raise ConfigError(_explain(exc, tracking_uri, experiment, run_id)) from None
    return [_source(client, tracking_uri, r) for r in found]


def _check_reachable(uri: str) -> None:
    """A server that does not answer fails in seconds (MLflow's client retries for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).close()  # noqa: S310 - the user's URI
    except urllib.error.HTTPError:
        return  # it answers (a proxy in front of it may not know /health)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot reach MLflow at {uri} ({exc}); check --tracking-uri and that the server "
                          f"runs (`mlflow server --port 5000`)") from None


def _explain(exc: BaseException, uri: str, experiment: str | None, run_id: str | None) -> str:
    text = str(exc).splitlines()[0] if str(exc) else repr(exc)
    if run_id is not None and ("RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower()):
        return f"MLflow at {uri} has no run {run_id!r}; check --run (the run id, not its name)"
    return (f"cannot read MLflow at {uri} ({type(exc).__name__}: {text}); check --tracking-uri "
            f"(http://host:5000 for a server, sqlite:///path.db for a database)"
            + (f" and --experiment {experiment!r}" if experiment else ""))


def _search(client: Any, experiment: str | None) -> list[Any]:
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = ", ".join(e.name for e in client.search_experiments()) or "none"
            raise ConfigError(f"MLflow has no experiment {experiment!r}; it has: {names}")
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    found: list[Any] = []
    for chunk in range(0, len(ids), 100):
        token = None
        while True:
            page = client.search_runs(ids[chunk:chunk + 100], max_results=1000, page_token=token)
            found += list(page)
            token = page.token
            if not token:
                break
    if not found:
        raise ConfigError(f"no MLflow runs to import{' in experiment ' + repr(experiment) if experiment else ''}")
    return found


def _source(client: Any, uri: str, run: Any) -> SourceRun:
    info, data = run.info, run.data
    tags = tuple(k if v in ("", "true", "True") else f"{k}={v}"
                 for k, v in sorted(data.tags.items()) if not k.startswith("mlflow."))
    experiment = client.get_experiment(info.experiment_id)
    return SourceRun(
        kind=_KIND, id=f"{info.experiment_id}/{info.run_id}", name=info.run_name or info.run_id,
        events=_reader(client, info.run_id, sorted(data.metrics), (info.end_time or info.start_time or 0) / 1000),
        project=experiment.name if experiment else None,
        tags=tags, status=_STATUS.get(str(info.status), "killed"), config=dict(data.params),
        notes=data.tags.get("mlflow.note.content") or None,
        started=info.start_time / 1000 if info.start_time else None,
        finished=info.end_time / 1000 if info.end_time else None, where=f"{uri} run {info.run_id}",
    )


def _reader(client: Any, run_id: str, keys: list[str], ended: float) -> Any:
    def events(media_dir: Path) -> Iterator[Event]:
        rows: dict[tuple[int, int], dict[str, float]] = {}
        for key in keys:
            try:
                history = client.get_metric_history(run_id, key)
            except Exception as exc:  # noqa: BLE001
                raise RunDirError(f"cannot read metric {key!r} of MLflow run {run_id}: {exc}") from None
            for m in history:
                rows.setdefault((int(m.step), int(m.timestamp)), {})[key] = float(m.value)
        for (step, stamp), values in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            yield ("metrics", step, stamp / 1000, values)
        yield from _artifacts(client, run_id, media_dir.parent / "artifacts", ended)

    return events


def _artifacts(client: Any, run_id: str, target: Path, ended: float) -> Iterator[Event]:
    from foundry_track.media import digest_path

    try:
        listed = client.list_artifacts(run_id)
    except Exception:  # noqa: BLE001 - a run whose artifact store is unreachable keeps its metrics
        return
    for item in listed:
        target.mkdir(parents=True, exist_ok=True)
        local = Path(client.download_artifacts(run_id, item.path, str(target)))
        yield ("artifact", 0, ended, {
            "path": str(local), "type": "mlflow-artifact", "name": Path(item.path).name,
            "description": f"imported from MLflow run {run_id}", "digest": digest_path(local), "metadata": {},
        })
