"""Losses: every network overfits one real hippocampus case; class weights matter."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import ResizeWithPadOrCrop

from medseg import networks
from medseg.losses import available_losses, create_loss

pytestmark = pytest.mark.needs_data

CASE = "hippocampus_003"
ROI = (32, 48, 32)
NUM_CLASSES = 3

# Small 3D widths: the test is about the loss decreasing, on 2 CPU cores.
SMALL: dict[str, dict] = {
    "unet": {"channels": (8, 16, 32, 64), "strides": (2, 2, 2), "num_res_units": 1},
    "deeplabv3plus": {
        "channels": (8, 16, 16, 32, 32),
        "num_blocks": (1, 1, 1, 1),
        "aspp_channels": 16,
        "low_level_channels": 16,
        "decoder_channels": 16,
    },
    "fcn": {"channels": (8, 16, 16, 32, 32), "convs_per_stage": 1, "fc_channels": 32},
    "segnet": {"channels": (8, 16, 32), "convs_per_stage": 1},
    "pspnet": {"channels": (8, 16, 16, 32, 32), "num_blocks": (1, 1, 1, 1), "decoder_channels": 16},
    "resencunet": {"channels": (8, 16, 32, 64), "strides": (2, 2, 2), "blocks_down": (1, 2, 2, 2)},
}


@pytest.fixture(scope="module")
def case(hippocampus_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One real case, cropped/padded to ``ROI``: z-scored image (1,1,*ROI), labels (1,1,*ROI)."""
    image = np.asarray(nib.load(hippocampus_dir / "imagesTr" / f"{CASE}.nii.gz").dataobj, dtype=np.float32)
    label = np.asarray(nib.load(hippocampus_dir / "labelsTr" / f"{CASE}.nii.gz").dataobj).astype(np.int64)
    image = (image - image.mean()) / image.std()
    fit = ResizeWithPadOrCrop(ROI)
    x = torch.as_tensor(np.asarray(fit(image[None])))[None]
    y = torch.as_tensor(np.asarray(fit(label[None])))[None].long()
    assert set(torch.unique(y).tolist()) == {0, 1, 2}
    return x.float(), y


@pytest.mark.parametrize("name", networks.available())
def test_overfit_one_real_case(name: str, case: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.manual_seed(0)
    x, y = case
    net = networks.create(name, spatial_dims=3, in_channels=1, out_channels=NUM_CLASSES, **SMALL[name])
    net.train()
    loss_fn = create_loss("dice_ce", num_classes=NUM_CLASSES)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.7 * losses[0], f"{name} did not fit one case: {np.round(losses, 3)}"


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("name", available_losses())
def test_class_weights_change_loss(
    name: str, include_background: bool, case: tuple[torch.Tensor, torch.Tensor]
) -> None:
    torch.manual_seed(0)
    _, y = case
    logits = torch.randn(1, NUM_CLASSES, *ROI)
    plain = create_loss(name, NUM_CLASSES, include_background=include_background)(logits, y)
    uniform = create_loss(name, NUM_CLASSES, [1.0, 1.0, 1.0], include_background=include_background)(
        logits, y
    )
    weighted = create_loss(name, NUM_CLASSES, [0.1, 1.0, 5.0], include_background=include_background)(
        logits, y
    )
    assert torch.isfinite(weighted)
    torch.testing.assert_close(uniform, plain)  # weights of 1 are no weights
    assert abs(weighted.item() - plain.item()) > 1e-3


def test_perfect_prediction_scores_lower(case: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Logits that agree with the labels give a lower loss than random ones, for every loss."""
    _, y = case
    perfect = 10.0 * torch.nn.functional.one_hot(y[:, 0], NUM_CLASSES).permute(0, 4, 1, 2, 3).float()
    random = torch.randn_like(perfect)
    for name in available_losses():
        loss = create_loss(name, NUM_CLASSES)
        assert loss(perfect, y) < loss(random, y), name


def test_create_loss_errors() -> None:
    with pytest.raises(ValueError, match="unknown loss"):
        create_loss("hausdorff")
    with pytest.raises(ValueError, match="one per class"):
        create_loss("dice_ce", num_classes=3, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="non-negative"):
        create_loss("dice", num_classes=2, class_weights=[1.0, -1.0])


def test_bundle_config_target() -> None:
    from monai.bundle import ConfigParser
    from monai.losses import DiceCELoss

    parser = ConfigParser(
        {
            "loss": {
                "_target_": "medseg.losses.create_loss",
                "name": "dice_ce",
                "num_classes": 3,
                "class_weights": [0.2, 1.0, 1.0],
                "include_background": False,
            }
        }
    )
    loss = parser.get_parsed_content("loss")
    assert isinstance(loss, DiceCELoss)
    torch.testing.assert_close(loss.cross_entropy.weight, torch.tensor([0.2, 1.0, 1.0]))
