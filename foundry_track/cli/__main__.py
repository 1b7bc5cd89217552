"""``python -m foundry_track.cli``: the same as the ``foundry-track`` command."""

from __future__ import annotations

import sys

from foundry_track.cli import main

sys.exit(main())
