"""What a network's output means: a segmentation network returns its logits ``(N, classes, H, W)``, or a
tuple whose first item is those logits (GSCNN adds its edge logits)."""

from __future__ import annotations

import torch


def segmentation_logits(output: torch.Tensor | tuple | list) -> torch.Tensor:
    """The segmentation logits of a model's output (the first item of a tuple/list, or the tensor)."""
    return output[0] if isinstance(output, tuple | list) else output
