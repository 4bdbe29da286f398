"""Export a bundle's network to TorchScript (MONAI ``ckpt_export``) or ONNX, checked against eager."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from medseg.bundle.core import Bundle
from medseg.bundle.loader import BundleInference, is_ensemble, load_inference
from medseg.errors import BundleError
from medseg.io.atomic import atomic_write

__all__ = ["export_bundle", "export_tolerance", "EXPORT_TOLERANCE"]

# fp32 rounding differs between eager PyTorch, TorchScript and ONNX Runtime kernels (summation
# order) and grows with the outputs' size: a deep network's logits of about 20 differ by ~2e-4 in
# a correct export, while a wrong export differs by whole logits. Relative to the largest logit.
EXPORT_TOLERANCE = 1e-4


def export_tolerance(expected: torch.Tensor) -> float:
    """The largest difference allowed from the eager output ``expected``: relative above 1, absolute below.

    Args:
        expected: the eager network's output on the example window.
    """
    return EXPORT_TOLERANCE * max(1.0, float(expected.abs().max()))


def _example_input(bundle: Bundle, inference: BundleInference) -> torch.Tensor:
    """A seeded random window of the inferer's ``roi_size``, with the bundle's input channels."""
    if not inference.roi_size:
        raise BundleError(f"bundle {bundle.name} defines no roi_size: cannot choose the export input shape")
    channels = int(bundle.input_format.get("num_channels", 1))
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(1, channels, *inference.roi_size, generator=generator)
    guidance = int(bundle.input_format.get("guidance_channels", 0) or 0)
    if guidance:  # an interactive bundle's click channels hold gaussians in [0, 1]
        example[:, channels - guidance :] = torch.rand(1, guidance, *inference.roi_size, generator=generator)
    return example


def export_bundle(
    bundle: Bundle, fmt: str = "torchscript", output: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Export ``models/model.pt`` to ``models/model.ts`` (TorchScript) or ``models/model.onnx``.

    The network is traced at the inferer's window size (``roi_size``), the shape sliding-window
    inference feeds it; the exported model's output is compared with the eager network's on a
    random window and must agree within :func:`export_tolerance` (``EXPORT_TOLERANCE`` times the
    largest eager logit, at least ``EXPORT_TOLERANCE``).

    Returns:
        ``{"format", "path", "input_shape", "max_abs_diff", "tolerance"}``.
    """
    if is_ensemble(bundle):
        raise BundleError(
            f"bundle {bundle.name} is a cross-validation ensemble (its members run in Python, each in its own "
            "sliding window): export its configurations' bundles, or serve the ensemble with medseg serve"
        )
    if not bundle.weights.is_file():
        raise BundleError(f"bundle {bundle.name} has no models/model.pt to export")
    fmt = fmt.lower()
    if fmt not in ("torchscript", "onnx"):
        raise BundleError(f"unknown export format {fmt!r}: choose torchscript or onnx")
    suffix = ".ts" if fmt == "torchscript" else ".onnx"
    path = Path(output).resolve() if output else bundle.root / "models" / f"model{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    inference = load_inference(bundle, device="cpu")
    network = inference.network
    example = _example_input(bundle, inference)
    with torch.no_grad():
        expected = network(example)
    tolerance = export_tolerance(expected)

    def write(tmp: Path) -> None:
        actual = _export(bundle, network, example, fmt, tmp)
        result["max_abs_diff"] = float((actual - expected).abs().max())
        if result["max_abs_diff"] > tolerance:
            raise BundleError(
                f"exported {fmt} model differs from eager by {result['max_abs_diff']:.2e} "
                f"(> {tolerance:.2e}, {EXPORT_TOLERANCE} of the largest logit); not written"
            )

    result: dict[str, Any] = {}
    atomic_write(path, write)
    diff = result["max_abs_diff"]
    return {
        "format": fmt,
        "path": str(path),
        "input_shape": list(example.shape),
        "max_abs_diff": diff,
        "tolerance": tolerance,
    }


def _export(
    bundle: Bundle, network: torch.nn.Module, example: torch.Tensor, fmt: str, tmp: Path
) -> torch.Tensor:
    """Write ``network`` in ``fmt`` to ``tmp`` and return the exported model's output for ``example``."""
    if fmt == "torchscript":
        from monai.bundle import ckpt_export

        ckpt_export(
            net_id="network_def",
            filepath=str(tmp),
            ckpt_file=str(bundle.weights),
            meta_file=str(bundle.config("metadata.json")),
            config_file=str(bundle.config("inference.json")),
            use_trace=True,
            input_shape=list(example.shape),
            bundle_root=str(bundle.root),
        )
        exported = torch.jit.load(str(tmp), map_location="cpu")
        with torch.no_grad():
            return exported(example)
    import onnxruntime

    torch.onnx.export(
        network,
        (example,),
        str(tmp),
        input_names=["image"],
        output_names=["pred"],
        dynamo=False,
        opset_version=17,
    )
    session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"image": example.numpy()})[0])
