"""Model Foundry: a small GPT trained on a shipped Spanish corpus, tracked with foundry-track.

    python -m model_foundry.cli train configs/quickstart.yaml

Importing the package is cheap: torch is imported by the modules that need it.
"""

__version__ = "0.1.0"
