"""Which SQLite journal mode a run directory gets.

WAL, the default, lets the run's readers (backend workers, the delivery
process, ``foundry-track runs``) read while the writer commits. It keeps its
index in memory shared between those processes (the mmap'd ``journal.db-shm``),
which is why SQLite's documentation says WAL does not work over a network file
system: two hosts never see each other's shared memory. A run directory on NFS,
Lustre, GPFS, BeeGFS, CIFS or a FUSE file system (sshfs, ...) therefore gets
SQLite's rollback journal (``journal_mode=DELETE``), which needs only the file
system's POSIX locks; ``FOUNDRY_TRACK_JOURNAL_MODE=wal|delete`` overrides the
choice. Linux is detected from ``/proc/self/mountinfo``; elsewhere WAL is kept.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final, Literal

from foundry_track.errors import ConfigError

__all__ = ["MODE_VARIABLE", "JournalMode", "choose_journal_mode", "is_network_fs", "mount_fstype"]

JournalMode = Literal["wal", "delete"]
MODE_VARIABLE: Final = "FOUNDRY_TRACK_JOURNAL_MODE"
_MOUNTINFO: Final = Path("/proc/self/mountinfo")
# File system types (the mountinfo names) whose files are shared between hosts.
_NETWORK_FS: Final = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "ceph", "glusterfs", "9p", "afs",
    "panfs", "wekafs", "pvfs2", "orangefs", "ocfs2", "gfs2", "ncpfs", "coda",
})
# FUSE file systems that are local (a container's root, a local disk through FUSE).
_LOCAL_FUSE: Final = frozenset({"fuse.fuse-overlayfs", "fuse.lxcfs", "fuse.portal", "fuse.gvfsd-fuse"})
_ESCAPE: Final = re.compile(r"\\([0-7]{3})")


def is_network_fs(fstype: str) -> bool:
    """Whether files of a mount of this type may be read or written from another host."""
    return fstype in _NETWORK_FS or (fstype.startswith("fuse.") and fstype not in _LOCAL_FUSE)


def mount_fstype(path: str | os.PathLike[str], mountinfo: str) -> str | None:
    """The type of the file system holding ``path``, read from the text of
    ``/proc/self/mountinfo``: the deepest mount point above the path (the
    last one listed, when mounts are stacked on the same point)."""
    target = os.path.realpath(path)
    best, fstype = -1, None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        point = _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])  # "\040" is a space
        inside = point == "/" or target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:
            best, fstype = len(point), tail[0]
    return fstype


def choose_journal_mode(run_dir: Path) -> tuple[JournalMode, str | None]:
    """The mode for a journal in ``run_dir``, and why it is not WAL (None when it is
    the default). ``FOUNDRY_TRACK_JOURNAL_MODE`` wins; a bad value is a ConfigError."""
    requested = os.environ.get(MODE_VARIABLE, "").strip().lower()
    if requested in ("wal", "delete"):
        return requested, f"{MODE_VARIABLE}={requested}"  # type: ignore[return-value]
    if requested not in ("", "auto"):
        raise ConfigError(f"{MODE_VARIABLE}={requested!r}: expected 'wal', 'delete' or 'auto' (detect a network "
                          f"file system and use 'delete' there)")
    try:
        fstype = mount_fstype(run_dir, _MOUNTINFO.read_text())
    except OSError:  # not Linux, or no /proc: keep the default
        return "wal", None
    if fstype is not None and is_network_fs(fstype):
        return "delete", f"{run_dir} is on a network file system ({fstype})"
    return "wal", None
