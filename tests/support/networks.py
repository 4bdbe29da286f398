"""Network definitions the tests time or count: small enough that a real training step takes milliseconds."""

from __future__ import annotations

__all__ = ["SMALL_UNET"]

# A 2-D MONAI-style U-Net of two levels (4 and 8 features), as a bundle's network_def.
SMALL_UNET = {
    "_target_": "medseg.networks.UNet",
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 3,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 1,
    "norm": "instance",
}
