"""The Page Controller network in torch, for training; `paged_context.controller` runs the
same network in NumPy at inference, from the safetensors checkpoint written here."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from paged_context.controller import FEATURES

PRIOR = FEATURES.index("log_next_probability")  # the feature the skip starts from


class ControllerNet(nn.Module):
    """Standardise the features, two GELU layers plus a linear skip, one utility score per
    page. The skip starts as the log of the change-point posterior's next-reference
    probability and the layers at zero, so training begins from the A0 rule (evict the
    page least likely to come next) and learns what to add to it."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        n = len(FEATURES)
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        self.l1 = nn.Linear(n, hidden)
        self.l2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)
        self.skip = nn.Linear(n, 1, bias=False)
        self.act = nn.GELU(approximate="tanh")
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        nn.init.zeros_(self.skip.weight)
        with torch.no_grad():
            self.skip.weight[0, PRIOR] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x - self.mean) / self.std
        return (self.out(self.act(self.l2(self.act(self.l1(h))))) + self.skip(h)).squeeze(-1)

    def fit_scaling(self, x: torch.Tensor) -> None:
        """Standardise with the training data's statistics (constant features stay as they are)."""
        self.mean.copy_(x.mean(0))
        self.std.copy_(torch.where(x.std(0) > 1e-6, x.std(0), torch.ones_like(self.std)))
        with torch.no_grad():
            self.skip.weight[0, PRIOR] = self.std[PRIOR]


def save_checkpoint(net: ControllerNet, path: str | Path, metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(path), metadata={"features": ",".join(FEATURES), **metadata})
    return path
