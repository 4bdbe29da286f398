"""``EnsembleNetwork`` returns the log of its members' averaged softmax: the ensemble's output equals
the average of its members, run one after another or batched, and ``fast`` runs the first alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from medseg.ensemble import EnsembleNetwork
from medseg.errors import BundleError
from medseg.networks import UNet


def _unet(seed: int) -> UNet:
    torch.manual_seed(seed)
    return UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=[8, 16], strides=[2], num_res_units=1)


def _members(tmp_path: Path, n: int, inferer=None) -> tuple[list[dict], list[UNet]]:
    members, nets = [], []
    for i in range(n):
        net = _unet(i).eval()
        path = tmp_path / f"m{i}.pt"
        torch.save({"model": net.state_dict()}, path)  # as the bundles' final weights are saved
        members.append({"network": _unet(100 + i), "weights": str(path), "inferer": inferer, "name": f"m{i}"})
        nets.append(net)
    return members, nets


@pytest.mark.parametrize("batched", [False, True])
def test_the_output_is_the_average_of_the_members(tmp_path: Path, batched: bool) -> None:
    members, nets = _members(tmp_path, 3)
    ensemble = EnsembleNetwork(members, batched=batched).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        expected = sum(torch.softmax(n(x), 1) for n in nets) / 3
        out = ensemble(x)
    assert torch.allclose(out.exp(), expected, atol=1e-5)
    assert torch.allclose(torch.softmax(out, 1), expected, atol=1e-5)  # a softmax after it is harmless
    assert ensemble.names == ["m0", "m1", "m2"]


def test_members_keep_their_sliding_window(tmp_path: Path) -> None:
    inferer = SlidingWindowInferer(roi_size=[8, 8, 8], overlap=0.5, mode="gaussian")
    members, nets = _members(tmp_path, 2, inferer)
    ensemble = EnsembleNetwork(members).eval()
    x = torch.randn(1, 1, 20, 12, 16)
    with torch.no_grad():
        expected = sum(inferer(x, lambda p, n=n: torch.softmax(n(p), 1)) for n in nets) / 2
        out = ensemble(x)
    assert torch.allclose(out.exp(), expected, atol=1e-5)


def test_fast_runs_the_first_member_alone(tmp_path: Path) -> None:
    members, nets = _members(tmp_path, 3)
    ensemble = EnsembleNetwork(members, fast=True).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(ensemble(x).exp(), torch.softmax(nets[0](x), 1), atol=1e-5)
    assert ensemble.names == ["m0"]


def test_missing_member_weights_are_refused(tmp_path: Path) -> None:
    members, _ = _members(tmp_path, 2)
    members[1]["weights"] = str(tmp_path / "gone.pt")
    with pytest.raises(BundleError, match="gone.pt"):
        EnsembleNetwork(members)
