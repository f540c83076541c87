"""mednext_lite: an exact, readable MedNeXt for 2D and 3D medical image segmentation.

Quick start::

    from mednext_lite import create_mednext
    model = create_mednext("B", in_channels=1, num_classes=3, kernel_size=3, spatial_dims=3)
"""

from .blocks import (
    GRN,
    ChannelsFirstLayerNorm,
    Head,
    MedNeXtBlock,
    MedNeXtDownBlock,
    MedNeXtUpBlock,
)
from .model import MedNeXt, MedNeXtConfig
from .variants import (
    PRESETS,
    compound_scale,
    create_mednext,
    get_preset,
    preset_config,
    scale_depth,
    scale_kernel,
    scale_width,
)

__version__ = "0.1.0"

__all__ = [
    "GRN",
    "PRESETS",
    "ChannelsFirstLayerNorm",
    "Head",
    "MedNeXt",
    "MedNeXtBlock",
    "MedNeXtConfig",
    "MedNeXtDownBlock",
    "MedNeXtUpBlock",
    "compound_scale",
    "create_mednext",
    "get_preset",
    "preset_config",
    "scale_depth",
    "scale_kernel",
    "scale_width",
]
