"""Dense retrieval: sentence embeddings from a local sentence-transformers model directory
(all-MiniLM-L6-v2: mean of the token vectors, normalised), scored by cosine similarity.
An optional extra; nothing on the serving path uses it."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


class Embedder:
    def __init__(self, path: str | Path, max_tokens: int = 256, batch: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} is not a sentence-transformers model directory (no config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.max_tokens, self.batch, self.torch = max_tokens, batch, torch

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One unit-length row per text."""
        rows = []
        with self.torch.inference_mode():
            for start in range(0, len(texts), self.batch):
                batch = self.tokenizer(
                    list(texts[start : start + self.batch]), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
                )
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                rows.append(self.torch.nn.functional.normalize(mean, dim=-1).numpy())
        return np.concatenate(rows) if rows else np.zeros((0, self.model.config.hidden_size), np.float32)
