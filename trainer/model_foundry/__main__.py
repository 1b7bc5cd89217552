"""``python -m model_foundry train CONFIG`` is ``python -m model_foundry.cli train CONFIG``."""

import sys

from model_foundry.cli import main

sys.exit(main())
