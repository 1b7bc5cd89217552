"""What ``foundry-track doctor`` reports for TensorBoard (the ``tracker_doctor``
hook): where the event files go, and whether that folder can be written.
No ``tensorboard`` import."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from foundry_track import checks
from foundry_track.events import DoctorCheck

if TYPE_CHECKING:
    from foundry_track_tensorboard import TensorBoardOptions

__all__ = ["doctor"]


def doctor(options: TensorBoardOptions, runs_dir: Path, check_disk: Callable[[str, Path], None]) -> list[DoctorCheck]:
    """The TensorBoard backend's ``tracker_doctor``."""
    if options.log_dir:
        check_disk("TensorBoard log_dir", Path(options.log_dir))
        return [checks.folder_check("tensorboard", "TensorBoard log_dir", Path(options.log_dir))]
    return [DoctorCheck("tensorboard", "folder", "info", f"event files go to <run dir>/tensorboard under {runs_dir}")]
