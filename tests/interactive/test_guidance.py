"""Clicks as guidance channels (medseg.interactive.guidance): checks, grid mapping, warm start."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.errors import BundleError, InputError
from medseg.interactive import AddClickGuidanced, guidance_label_names, parse_clicks, warm_start

NAMES = guidance_label_names({0: "background", 1: "anterior", 2: "posterior"})
SHAPE = (35, 51, 35)


def test_label_names_put_background_last():
    assert list(NAMES.items()) == [("anterior", 1), ("posterior", 2), ("background", 0)]


def test_parse_clicks_keeps_every_name_in_order():
    clicks = parse_clicks(
        {"posterior": [[1, 2, 3]], "background": [[0, 0, 0], [34, 50, 34.0]], "x": 1}, NAMES, SHAPE
    )
    assert clicks == {"anterior": [], "posterior": [[1, 2, 3]], "background": [[0, 0, 0], [34, 50, 34]]}


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"hippo": [[1, 2, 3]]}, "unknown label 'hippo'"),
        ({"anterior": [[1, 2]]}, "must be [i, j, k]"),
        ({"anterior": "1,2,3"}, "list of [i, j, k]"),
        ({"anterior": [[1.5, 2, 3]]}, "integer voxel indices"),
        ({"anterior": [["1", 2, 3]]}, "integer voxel indices"),
        ({"anterior": [[True, 2, 3]]}, "integer voxel indices"),
        ({"anterior": [[35, 2, 3]]}, "outside the image"),
        ({"anterior": [[-1, 2, 3]]}, "outside the image"),
        ({"anterior": [[1, 2, 3]] * 300}, "too many clicks"),
    ],
)
def test_parse_clicks_refuses_bad_clicks_with_a_message(params, words):
    with pytest.raises(InputError, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_clicks(params, NAMES, SHAPE)


@pytest.mark.needs_data
def test_clicks_land_on_the_resampled_grid(hippocampus_dir):
    """A click given on the stored array lands where that voxel went after RAS + 2 mm resampling."""
    from monai.transforms import Compose, EnsureChannelFirstd, Orientationd, Spacingd

    from medseg.io import LoadImaged

    image = hippocampus_dir / "imagesTr" / "hippocampus_001.nii.gz"
    load = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
                    Orientationd("image", axcodes="LPS"), Spacingd("image", pixdim=[2.0, 2.0, 2.0])])  # fmt: skip
    prepared = load({"image": str(image)})
    guide = AddClickGuidanced("image", NAMES)
    out = guide({**prepared, "guidance": {"posterior": [[10, 20, 30]]}})["image"]
    assert out.shape[0] == 4 and out.applied_operations == prepared["image"].applied_operations
    assert torch.equal(out[0], prepared["image"][0])
    assert (
        float(out[1].abs().max()) == 0 and float(out[3].abs().max()) == 0
    )  # no anterior, no background click
    # stored voxel -> world (the file's affine) -> LPS 2 mm voxel
    world = prepared["image"].meta["original_affine"] @ np.array([10, 20, 30, 1.0])
    expected = np.rint((np.linalg.inv(np.asarray(out.affine)) @ world)[:3]).astype(int)
    peak = np.unravel_index(int(torch.argmax(out[2])), out.shape[1:])
    assert list(peak) == list(expected) and float(out[2].max()) == pytest.approx(1.0)
    plain = guide(prepared)["image"]  # no clicks: the network segments on its own
    assert plain.shape[0] == 4 and float(plain[1:].abs().max()) == 0


def test_warm_start_grows_the_input_channels(tmp_path):
    from medseg.networks import UNet

    def unet(in_channels):
        return UNet(spatial_dims=3, in_channels=in_channels, out_channels=3, channels=[8, 16], strides=[2],
                    num_res_units=1, norm="instance")  # fmt: skip

    plain, interactive = unet(1), unet(4)
    path = tmp_path / "plain.pt"
    torch.save({"model": plain.state_dict()}, path)
    warm_start(interactive, path)
    x = torch.randn(1, 1, 16, 16, 16)
    guidance = torch.rand(1, 3, 16, 16, 16)
    with torch.no_grad():  # the guidance weights start at zero: the plain network's output
        assert torch.allclose(interactive(torch.cat([x, guidance], 1)), plain(x), atol=1e-5)
    with pytest.raises(BundleError, match="another architecture"):
        warm_start(
            UNet(spatial_dims=3, in_channels=4, out_channels=3, channels=[8, 16, 32], strides=[2, 2]), path
        )
