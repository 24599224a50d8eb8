"""Building blocks whose attribute names reproduce NVIDIA/tacotron2's state_dict keys.

The wrappers (``LinearNorm.linear_layer``, ``ConvNorm.conv``) exist only so that
parameter names match NVIDIA's checkpoints; they add Xavier initialisation with the
gain of the non-linearity that follows, as the original does.
"""

from __future__ import annotations

import torch
from torch import nn


class LinearNorm(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, w_init_gain: str = "linear") -> None:
        super().__init__()
        self.linear_layer = nn.Linear(in_dim, out_dim, bias=bias)
        nn.init.xavier_uniform_(self.linear_layer.weight, gain=nn.init.calculate_gain(w_init_gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_layer(x)


class ConvNorm(nn.Module):
    """1-D convolution with 'same' padding (odd kernels)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, bias: bool = True,
                 w_init_gain: str = "linear") -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=bias)
        nn.init.xavier_uniform_(self.conv.weight, gain=nn.init.calculate_gain(w_init_gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, w_init_gain: str) -> nn.Sequential:
    # Sequential indices 0 (conv) and 1 (batch norm) are part of NVIDIA's key names.
    return nn.Sequential(
        ConvNorm(in_channels, out_channels, kernel_size, w_init_gain=w_init_gain),
        nn.BatchNorm1d(out_channels),
    )
