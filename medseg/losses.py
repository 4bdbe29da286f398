"""Segmentation losses: MONAI's Dice, focal and compound losses configured for logits + label maps.

Every loss takes the network's logits ``(B, C, *spatial)`` and an integer label map
``(B, 1, *spatial)`` (one-hot encoded inside, ``to_onehot_y=True``). In a MONAI bundle
config::

    "loss": {"_target_": "medseg.losses.create_loss", "name": "dice_ce", "num_classes": 3,
             "class_weights": [0.2, 1.0, 1.0]}
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss, FocalLoss
from torch import nn

__all__ = ["LOSSES", "available_losses", "create_loss"]

LOSSES: dict[str, type[nn.Module]] = {
    "dice_ce": DiceCELoss,
    "dice_focal": DiceFocalLoss,
    "dice": DiceLoss,
    "focal": FocalLoss,
}


def available_losses() -> list[str]:
    """Names accepted by :func:`create_loss`, sorted."""
    return sorted(LOSSES)


def _accepts(cls: type, name: str) -> bool:
    return name in inspect.signature(cls.__init__).parameters


def _class_weight_kwarg(cls: type) -> str:
    """Keyword of the per-class weights: ``weight`` in MONAI >= 1.2 (1.5.2 and 1.6 included),
    ``ce_weight`` in the DiceCELoss of older releases."""
    if _accepts(cls, "weight"):
        return "weight"
    if _accepts(cls, "ce_weight"):
        return "ce_weight"
    raise TypeError(f"{cls.__name__} of this MONAI version takes no class weights.")


def create_loss(
    name: str = "dice_ce",
    num_classes: int | None = None,
    class_weights: Sequence[float] | torch.Tensor | None = None,
    include_background: bool = True,
    gamma: float = 2.0,
    lambda_dice: float = 1.0,
    lambda_other: float = 1.0,
    batch: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Create a segmentation loss by name.

    ``dice_ce``: MONAI ``DiceCELoss`` (soft Dice on softmax probabilities + cross-entropy,
    the nnU-Net default). ``dice_focal``: MONAI ``DiceFocalLoss`` (soft Dice on softmax +
    focal loss; MONAI's focal term is the per-channel sigmoid focal loss). ``dice``:
    ``DiceLoss`` on softmax. ``focal``: ``FocalLoss`` on softmax (multi-class focal loss,
    Lin et al. 2017). All one-hot encode the label map (``to_onehot_y=True``).

    Args:
        name: one of :func:`available_losses`.
        num_classes: number of classes (logit channels), background included; checked
            against ``class_weights``.
        class_weights: one weight per class, background included (length ``num_classes``),
            ``None`` for none. They weight the cross-entropy (``dice_ce``), the per-class
            Dice terms (all Dice losses) and the focal term. With
            ``include_background=False`` the background weight is dropped where the loss
            has no background channel.
        include_background: include the background channel in the Dice (and focal) terms.
        gamma: focal exponent (``dice_focal``, ``focal``).
        lambda_dice: weight of the Dice term (``dice_ce``, ``dice_focal``).
        lambda_other: weight of the cross-entropy (``dice_ce``) or focal (``dice_focal``) term.
        batch: Dice over the whole batch instead of per image.
        kwargs: further keyword arguments of the MONAI class (``smooth_nr``, ``squared_pred``,
            ``label_smoothing``, ...).

    Raises:
        ValueError: unknown name, or ``class_weights`` that do not match ``num_classes``.
    """
    key = name.lower().replace("-", "_")
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(available_losses())}.")
    cls = LOSSES[key]
    weights: torch.Tensor | None = None
    if class_weights is not None:
        weights = torch.as_tensor(class_weights, dtype=torch.float32).flatten()
        if num_classes is not None and weights.numel() != num_classes:
            raise ValueError(
                f"class_weights has {weights.numel()} values, expected one per class ({num_classes}, background included)."
            )
        if (weights < 0).any():
            raise ValueError("class_weights must be non-negative.")
        if not include_background and weights.numel() < 2:
            raise ValueError("class_weights needs the background weight too (length num_classes).")

    options: dict[str, Any] = {"include_background": include_background, "to_onehot_y": True}
    if key in ("dice_ce", "dice_focal", "dice"):
        options["softmax"] = True
        options["batch"] = batch
    if key in ("dice_focal", "focal"):
        options["gamma"] = gamma
    if key == "focal" and _accepts(cls, "use_softmax"):
        options["use_softmax"] = True
    if key == "dice_ce":
        options.update(lambda_dice=lambda_dice, lambda_ce=lambda_other)
    elif key == "dice_focal":
        options.update(lambda_dice=lambda_dice, lambda_focal=lambda_other)
    if weights is not None:
        # DiceCELoss drops the background weight from its Dice term itself and needs the
        # full vector for cross-entropy; the others see only the channels they score.
        if key != "dice_ce" and not include_background:
            weights = weights[1:]
        options[_class_weight_kwarg(cls)] = weights
    options.update(kwargs)
    return cls(**options)
