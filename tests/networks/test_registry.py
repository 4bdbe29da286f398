"""The network registry (medseg.networks.registry): one total-stride rule per network, the one each
network pads to."""

from __future__ import annotations

import pytest

import medseg.networks as networks
from medseg.errors import ConfigError
from medseg.networks.registry import NETWORK_SPECS, network_spec, total_stride


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("unet", {"channels": (8, 16, 32), "strides": ((2, 2, 1), 2)}),
        ("unet", {}),
        ("deeplabv3plus", {"output_stride": 16}),
        ("fcn", {}),
        ("segnet", {"channels": (8, 16, 32)}),
        ("pspnet", {}),
    ],
)
def test_registry_stride_is_the_networks_padding(name: str, options: dict) -> None:
    spec = network_spec(name)
    network = networks.create(name, spatial_dims=3, in_channels=1, out_channels=2, **options)
    definition = {"_target_": spec.target, "spatial_dims": 3, **options}
    assert total_stride(definition) == network.size_divisor


def test_every_network_is_registered_once() -> None:
    assert sorted(spec.name for spec in NETWORK_SPECS) == networks.available()
    assert network_spec("medseg.networks.UNet") is network_spec("UNet") is network_spec("unet")
    with pytest.raises(ConfigError, match="choose one of"):
        network_spec("resnet")
