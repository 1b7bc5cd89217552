"""Run directories on cluster file systems: a network file system is detected
and its journal uses SQLite's rollback journal instead of WAL; the mode can be
forced, and a run in that mode is written, read live by another process and
synced like any other."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import foundry_track as ft
from foundry_track import journal_mode
from foundry_track.errors import ConfigError
from foundry_track.journal import JOURNAL_FILE, Journal
from foundry_track.journal_mode import choose_journal_mode, is_network_fs, mount_fstype
from tests.helpers.recorder import metric_steps

MOUNTINFO = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 252:1 / / rw,relatime - ext4 /dev/vda rw
40 27 0:45 / /scratch rw,relatime shared:20 - lustre 10.0.0.1@o2ib:/scratch rw,flock
41 27 0:46 /home /home rw,relatime - nfs4 fs1:/export/home rw,vers=4.2
42 41 0:47 / /home/me/fast rw,relatime - tmpfs tmpfs rw
43 27 0:48 / /mnt/my\040share rw,nosuid - fuse.sshfs me@login:/data rw
44 27 0:49 / /mnt/box rw - fuse.fuse-overlayfs fuse-overlayfs rw
45 27 0:50 / /mnt/box rw - cifs //srv/box rw
"""


@pytest.mark.parametrize("path, fstype", [
    ("/scratch/me/runs/exp0", "lustre"),
    ("/home/me/runs", "nfs4"),
    ("/home/me/fast/runs", "tmpfs"),  # a local mount inside the NFS home
    ("/home2/me", "ext4"),  # "/home" is not a prefix of "/home2"
    ("/mnt/my share/runs", "fuse.sshfs"),  # mountinfo writes the space as \040
    ("/mnt/box/runs", "cifs"),  # stacked on the same point: the last one listed is visible
    ("/tmp/x", "ext4"),
])
def test_the_file_system_of_a_path_is_read_from_mountinfo(path: str, fstype: str) -> None:
    assert mount_fstype(path, MOUNTINFO) == fstype


def test_network_file_systems_are_told_from_local_ones() -> None:
    for name in ("nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "beegfs", "ceph", "fuse.sshfs", "fuse.glusterfs"):
        assert is_network_fs(name), name
    for name in ("ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "fuse.fuse-overlayfs", "fuseblk"):
        assert not is_network_fs(name), name


def _fake_mountinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fstype: str) -> None:
    fake = tmp_path / "mountinfo"
    fake.write_text(f"27 1 252:1 / / rw - ext4 /dev/vda rw\n50 27 0:60 / {tmp_path} rw - {fstype} srv:/x rw\n")
    monkeypatch.setattr(journal_mode, "_MOUNTINFO", fake)


def test_the_mode_is_chosen_from_the_file_system_and_can_be_forced(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_mountinfo(tmp_path, monkeypatch, "nfs4")
    assert choose_journal_mode(tmp_path / "runs" / "a") == ("delete", f"{tmp_path / 'runs' / 'a'} is on a network "
                                                                     f"file system (nfs4)")
    monkeypatch.setenv("FOUNDRY_TRACK_JOURNAL_MODE", "wal")
    assert choose_journal_mode(tmp_path) == ("wal", "FOUNDRY_TRACK_JOURNAL_MODE=wal")
    monkeypatch.setenv("FOUNDRY_TRACK_JOURNAL_MODE", "DELETE")
    assert choose_journal_mode(Path("/")) == ("delete", "FOUNDRY_TRACK_JOURNAL_MODE=delete")
    monkeypatch.setenv("FOUNDRY_TRACK_JOURNAL_MODE", "rollback")
    with pytest.raises(ConfigError, match="FOUNDRY_TRACK_JOURNAL_MODE='rollback': expected 'wal', 'delete' or 'auto'"):
        choose_journal_mode(tmp_path)
    monkeypatch.setenv("FOUNDRY_TRACK_JOURNAL_MODE", "auto")
    _fake_mountinfo(tmp_path, monkeypatch, "xfs")
    assert choose_journal_mode(tmp_path) == ("wal", None)


def test_a_journal_on_a_network_file_system_uses_a_rollback_journal_and_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="foundry_track")
    _fake_mountinfo(tmp_path, monkeypatch, "lustre")
    path = tmp_path / "run" / JOURNAL_FILE
    for _ in range(2):  # the run, then e.g. its delivery: one line
        journal = Journal(path)
        journal.append("metrics", 0, 0.0, {"a": 1.0})
        journal.flush()
        journal.close()
    assert journal.journal_mode == "delete"
    assert caplog.text.count("journal uses SQLite's journal_mode=DELETE") == 1
    assert "on a network file system (lustre)" in caplog.text and "One host may write" in caplog.text
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert con.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 2
    con.close()
    assert not path.with_name(JOURNAL_FILE + "-wal").exists()


_READER = """
import json, sys, time
from pathlib import Path
from foundry_track.journal import Journal
path, stop, progress = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
while not path.exists():
    time.sleep(0.01)
reads, errors = [], []
while True:
    last = stop.exists()
    try:
        journal = Journal(path, readonly=True)
        reads.append(sum(1 for _ in journal.iter_records("metrics")))
        journal.close()
        progress.write_text(str(reads[-1]))
    except Exception as exc:
        errors.append(repr(exc))
    if last:
        break
    time.sleep(0.005)
print(json.dumps({"reads": reads, "errors": errors}))
"""


def test_a_run_in_rollback_mode_is_read_live_by_another_process_and_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault_plugins: Path
) -> None:
    monkeypatch.setenv("FOUNDRY_TRACK_JOURNAL_MODE", "delete")
    flag = tmp_path / "fault"
    flag.touch()
    run = ft.init({"dir": str(tmp_path / "runs"), "fallback": None, "flush_timeout": 3, "journal_flush_interval": 0.02,
                   "backends": {"recorder": {"out": str(tmp_path / "rec.jsonl")},
                                "raising": {"out": str(tmp_path / "raising.jsonl"), "fault_flag": str(flag)}}})
    assert run.dir is not None and run._journal is not None and run._journal.journal_mode == "delete"
    stop, progress = tmp_path / "stop", tmp_path / "progress"
    reader = subprocess.Popen([sys.executable, "-c", _READER, str(run.dir / JOURNAL_FILE), str(stop), str(progress)],
                              stdout=subprocess.PIPE, text=True)
    for step in range(3000):
        run.log({"loss": 1.0 / (step + 1)}, step=step)
        if step % 100 == 99:
            time.sleep(0.02)
        if step == 1499:  # the reader has read some of the run while it is written
            end = time.monotonic() + 60
            while not (progress.exists() and progress.read_text() not in ("", "0")):
                assert time.monotonic() < end and reader.poll() is None, "the reader read nothing"
                time.sleep(0.01)
    undelivered = run.finish()
    stop.touch()
    out, _ = reader.communicate(timeout=60)
    seen = json.loads(out)
    assert seen["errors"] == []
    assert seen["reads"] == sorted(seen["reads"]) and seen["reads"][-1] == 3000
    assert any(0 < n < 3000 for n in seen["reads"]), "the reader never read while the run was writing"
    assert "recorder" not in undelivered and undelivered.get("raising")
    assert sorted(metric_steps(tmp_path / "rec.jsonl")) == list(range(3000))
    assert not (run.dir / (JOURNAL_FILE + "-wal")).exists()

    flag.unlink()  # the backend works again: sync delivers what it missed, once
    assert ft.sync(run.dir) == {}
    delivered = metric_steps(tmp_path / "raising.jsonl")
    assert sorted(delivered) == list(range(3000)) and set(delivered.values()) == {1}
    con = sqlite3.connect(run.dir / JOURNAL_FILE)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()
