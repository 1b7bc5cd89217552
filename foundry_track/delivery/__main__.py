"""``python -m foundry_track.delivery RUN_DIR``: the delivery process (started by ``init``)."""

import sys

from foundry_track.delivery.child import main

sys.exit(main())
