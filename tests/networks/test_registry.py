"""The network registry (medseg.networks.registry): one total-stride rule per network, the one each
network pads to."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import medseg.networks as networks
from medseg.errors import ConfigError
from medseg.networks.registry import _SPECS, Design, UNetSpec, network_spec, network_specs, total_stride


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("unet", {"channels": (8, 16, 32), "strides": ((2, 2, 1), 2)}),
        ("unet", {}),
        (
            "resencunet",
            {
                "channels": (8, 16, 32),
                "strides": ((2, 2, 1), 2),
                "blocks_down": (1, 1, 1),
                "blocks_up": (1, 1),
            },
        ),
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
    assert sorted(spec.name for spec in network_specs()) == networks.available()
    assert network_spec("medseg.networks.UNet") is network_spec("UNet") is network_spec("unet")
    with pytest.raises(ConfigError, match="choose one of"):
        network_spec("resnet")


def test_registry_and_bundle_check_import_without_torch() -> None:
    """``medseg bundle check`` re-renders bundles from the registry without importing torch."""
    import subprocess
    import sys

    code = (
        "import sys, medseg.networks, medseg.networks.registry, medseg.render.check, medseg.cli.bundle; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture
def new_network_name() -> Iterator[str]:
    yield "unet_wide"
    _SPECS.pop("unet_wide", None)


def test_new_network_is_one_class(new_network_name: str) -> None:
    """A network defined as one NetworkSpec subclass is planned, padded and built by name."""
    import json
    from pathlib import Path

    from medseg.plan.planner import make_plan

    class WideUNetSpec(UNetSpec):
        name = new_network_name
        target = "medseg.networks.UNet"

        def network_def(self, design: Design) -> dict:
            return {**super().network_def(design), "channels": [2 * c for c in design.widths]}

    assert network_spec(new_network_name) is _SPECS[new_network_name]
    fingerprint = json.loads(
        (
            Path(__file__).resolve().parents[2] / "bundles/hippocampus_unet3d/plans/fingerprint.json"
        ).read_text()
    )
    plan = make_plan(fingerprint, network=new_network_name, target="gpu")
    unet = make_plan(fingerprint, network="unet", target="gpu")
    assert plan["inputs"]["network"] == new_network_name
    assert plan["values"]["network"]["value"]["channels"] == [
        2 * c for c in unet["values"]["network"]["value"]["channels"]
    ]
    network = networks.create(
        new_network_name, spatial_dims=3, out_channels=3, channels=(8, 16), strides=(2,)
    )
    assert type(network) is networks.UNet
