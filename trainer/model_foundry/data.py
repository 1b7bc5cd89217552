"""The training text: read, optionally ablated, split, and served as byte batches.

Tokenization is the identity on UTF-8 bytes: token ids are 0..255, so there
is no tokenizer to train, ship or download. The default corpus is the Spanish
prose in ``model_foundry/data/*.txt`` (written for this repository and
dedicated to the public domain; see ``data/README.md``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from model_foundry.config import ConfigError, DataConfig

__all__ = ["CORPUS_DIR", "ByteDataset", "corpus_files", "decode", "encode", "load_text", "remove_sentences"]

CORPUS_DIR = Path(__file__).parent / "data"
# A sentence ends at . ! ? or … followed by whitespace, or at a blank line.
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|\n\s*\n")


def encode(text: str) -> torch.Tensor:
    """UTF-8 bytes of ``text`` as a uint8 tensor (the token ids)."""
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).clone()


def decode(ids: torch.Tensor | list[int]) -> str:
    """Token ids back to text; a sequence cut mid-character decodes with U+FFFD."""
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def corpus_files(cfg: DataConfig, base_dir: Path) -> list[Path]:
    """``data.files`` under ``base_dir``, or the shipped corpus; a missing file is a ConfigError."""
    if cfg.files is None:
        return sorted(CORPUS_DIR.glob("*.txt"))
    files = [path if path.is_absolute() else base_dir / path for path in map(Path, cfg.files)]
    for path in files:
        if not path.is_file():
            raise ConfigError(f"data.files: {str(path)!r} does not exist (paths are relative to base_dir {str(base_dir)!r})")
    return files


def remove_sentences(text: str, patterns: list[str]) -> tuple[str, int]:
    """Drop every sentence matching one of ``patterns``; return the text and how many went.

    This is how the ablation experiments (exp1, exp2) change the corpus: a
    crude sentence splitter plus regular expressions, so the ablation is
    visible in the YAML and easy to audit.
    """
    if not patterns:
        return text, 0
    matcher = re.compile("|".join(f"(?:{pattern})" for pattern in patterns), re.IGNORECASE)
    kept, removed = [], 0
    for paragraph in re.split(r"\n\s*\n", text):
        sentences = _SENTENCE_END.split(paragraph)
        keep = [sentence for sentence in sentences if not matcher.search(sentence)]
        removed += len(sentences) - len(keep)
        if keep:
            kept.append(" ".join(keep))
    return "\n\n".join(kept), removed


def load_text(cfg: DataConfig, base_dir: Path) -> tuple[str, int]:
    """The whole corpus as one string (files joined by blank lines) and the number of removed sentences."""
    files = corpus_files(cfg, base_dir)
    if not files:
        raise ConfigError(f"data.files: no .txt files found in {CORPUS_DIR}")
    text = "\n\n".join(path.read_text(encoding="utf-8").strip() for path in files)
    return remove_sentences(text, cfg.remove_sentences_matching)


class ByteDataset:
    """Train and validation bytes, and random (input, target) windows of them.

    Batches come from a dedicated ``torch.Generator`` so that a checkpoint can
    save and restore exactly where the data stream was.
    """

    def __init__(self, cfg: DataConfig, context_length: int, base_dir: Path, seed: int) -> None:
        text, self.removed_sentences = load_text(cfg, base_dir)
        data = encode(text)
        n_val = int(len(data) * cfg.val_fraction)
        self.train, self.val = data[: len(data) - n_val], data[len(data) - n_val:]
        self.context_length = context_length
        for split, part in (("train", self.train), ("val", self.val)):
            if len(part) <= context_length + 1:
                raise ConfigError(
                    f"data: the {split} split has {len(part)} bytes, fewer than model.context_length+2="
                    f"{context_length + 2}; use more text or a smaller context_length/val_fraction"
                )
        self.generator = torch.Generator().manual_seed(seed)

    def batch(
        self, split: str, batch_size: int, device: torch.device, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` windows of ``context_length`` bytes; targets are the inputs shifted by one."""
        data = self.train if split == "train" else self.val
        length = self.context_length
        starts = torch.randint(len(data) - length - 1, (batch_size,), generator=generator or self.generator).tolist()
        inputs = torch.stack([data[start : start + length] for start in starts]).long()
        targets = torch.stack([data[start + 1 : start + 1 + length] for start in starts]).long()
        if device.type == "cuda":
            # Pinned memory + non_blocking: the copy overlaps the previous step's kernels.
            return inputs.pin_memory().to(device, non_blocking=True), targets.pin_memory().to(device, non_blocking=True)
        return inputs, targets

    @property
    def num_bytes(self) -> int:
        return len(self.train) + len(self.val)
