"""The evaluators' inferer: the network's forward in float32, or under bfloat16 autocast."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer

from pipeline.device import autocast


class Bf16Inferer(SimpleInferer):
    """``SimpleInferer`` under bfloat16 autocast on the input's device; the output is cast back to
    float32 so metrics and reports see the usual dtype."""

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        with autocast(inputs.device, True):
            output = super().__call__(inputs, network, *args, **kwargs)
        return output.float()


def precision_inferer(bf16: bool) -> Inferer:
    """``Bf16Inferer`` when ``bf16``, else MONAI's ``SimpleInferer``."""
    return Bf16Inferer() if bf16 else SimpleInferer()
