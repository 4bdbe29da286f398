"""The one way medseg loads a bundle's ``inference.json`` and ``models/model.pt``.

``medseg segment``, ``medseg bundle export`` and the MONAI Label app all run a bundle's network;
they read its weights with the same unwrapping rule (:func:`read_state_dict`) and build its
objects from one parse of the config (:func:`load_inference`), the way MONAI's ``ConfigWorkflow``
and ``InferProperties`` describe an inference bundle: ``network_def``, ``preprocessing``,
``inferer``, ``postprocessing``, with ``bundle_root`` set to the bundle folder.

The module also runs inside the MONAI Label environment (older MONAI, torch and numpy): it uses
only ``torch.load``, ``ConfigParser`` and ``load_state_dict``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.bundle.core import Bundle
from medseg.errors import BundleError, first_line

__all__ = [
    "STATE_DICT_KEYS",
    "BundleInference",
    "read_state_dict",
    "load_weights",
    "read_inference_config",
    "load_inference",
    "is_ensemble",
    "weight_files",
]

# Keys under which checkpoints wrap the network's state dict (MONAI's CheckpointSaver/CheckpointLoader
# use "model", Lightning and others "state_dict", some zoo bundles "network"), unwrapped in this order.
STATE_DICT_KEYS = ("model", "state_dict", "network")

# The objects every inference bundle must define (MONAI's InferProperties, minus the engine).
REQUIRED_KEYS = ("network_def", "preprocessing", "inferer")


def read_state_dict(path: str | os.PathLike, map_location: Any = "cpu") -> Mapping[str, Any]:
    """Read a network's state dict from a checkpoint file, safely (``torch.load(weights_only=True)``).

    A checkpoint holding the state dict under ``"model"``, ``"state_dict"`` or ``"network"``
    (:data:`STATE_DICT_KEYS`, looked up in that order, each at most once) is unwrapped; a bare state
    dict is returned as is.

    Args:
        path: the checkpoint file (``models/model.pt``).
        map_location: where the tensors are loaded (``torch.load``'s ``map_location``).

    Raises:
        BundleError: the file is missing, unreadable (truncated, not a torch file, pickled code)
            or holds no state dict.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"weights file {path} not found: train the bundle or give an existing file")
    try:
        state = torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, foreign or unsafe file
        raise BundleError(f"cannot load the weights {path}: {first_line(exc)}") from exc
    for key in STATE_DICT_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise BundleError(f"{path} holds no state dict (a mapping of parameter names to tensors)")
    return state


def load_weights(network: Any, path: str | os.PathLike, device: Any = "cpu", strict: bool = True) -> Any:
    """Load the checkpoint ``path`` into ``network`` (in place) and move it to ``device``.

    Args:
        network: a ``torch.nn.Module``.
        path: checkpoint file, unwrapped by :func:`read_state_dict`.
        device: where the network goes (and the tensors are loaded).
        strict: every key must match (``load_state_dict``'s ``strict``).

    Returns:
        ``network``, on ``device``; its train/eval mode is left as it was.

    Raises:
        BundleError: unreadable file, or weights that do not fit the network.
    """
    import torch

    device = torch.device(device)
    state = read_state_dict(path, map_location=device)
    try:
        network.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise BundleError(
            f"the weights {path} do not fit the bundle's network_def ({first_line(exc)})"
        ) from exc
    return network.to(device)


@dataclass
class BundleInference:
    """A bundle's inference objects, built from one parse of its config.

    Attributes:
        bundle: the bundle.
        network: ``network_def`` with the bundle's weights, on the device, in eval mode.
        preprocessing: the ``preprocessing`` transform (usually a ``Compose``).
        inferer: the ``inferer`` (e.g. ``SlidingWindowInferer``).
        postprocessing: the parsed (not instantiated) ``postprocessing`` config, or None.
        roi_size: the inferer's window (``roi_size``), or None when it has none.
        spatial_dims: spatial dimensions of the network (from ``network_def``).
        parser: the ``ConfigParser``, for anything else the config defines.
    """

    bundle: Bundle
    network: Any
    preprocessing: Any
    inferer: Any
    postprocessing: Any
    roi_size: list[int] | None
    spatial_dims: int
    parser: Any = field(repr=False)


def read_inference_config(bundle: Bundle, config: str = "inference") -> Any:
    """Parse ``configs/<config>.json`` with the bundle's metadata, ``bundle_root`` set; nothing built.

    Raises:
        BundleError: the config is missing, malformed, or lacks ``network_def``, ``preprocessing``
            or ``inferer``.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    config_path, meta_path = bundle.config(config), bundle.config("metadata")
    try:
        parser.read_config(str(config_path))
        parser.read_meta(str(meta_path))
    except Exception as exc:  # malformed JSON/YAML
        raise BundleError(f"cannot read the bundle config {config}: {first_line(exc)}") from exc
    parser["bundle_root"] = str(bundle.root)
    for key in REQUIRED_KEYS:
        if key not in parser:
            raise BundleError(f"the bundle's {config} config has no '{key}'")
    return parser


def load_inference(
    bundle: Bundle,
    device: Any = "cpu",
    config: str = "inference",
    weights: str | os.PathLike | None = None,
    adjust: Callable[[Any], None] | None = None,
) -> BundleInference:
    """Build a bundle's network (with its weights), preprocessing and inferer from one config parse.

    Args:
        bundle: the bundle.
        device: where the network runs; the config's ``device`` is set to it.
        config: the config to read (``inference``).
        weights: checkpoint to load instead of ``models/model.pt``.
        adjust: called with the ``ConfigParser`` before anything is built, to override settings.

    Raises:
        BundleError: the config, its objects or the weights cannot be used.
    """
    import torch

    device = torch.device(device)
    parser = read_inference_config(bundle, config)
    parser["device"] = f"$torch.device('{device}')"
    if adjust is not None:
        adjust(parser)
    path = Path(weights) if weights is not None else bundle.weights
    if not path.is_file() and not is_ensemble(bundle):
        raise BundleError(f"bundle {bundle.name} has no weights at {path}; train or download them first")
    try:
        network = parser.get_parsed_content("network_def", instantiate=True)
        preprocessing = parser.get_parsed_content("preprocessing", instantiate=True)
        inferer = parser.get_parsed_content("inferer", instantiate=True)
    except Exception as exc:  # any failure to build the bundle's objects
        raise BundleError(
            f"cannot build the bundle's network, preprocessing or inferer: {first_line(exc)}"
        ) from exc
    if getattr(network, "loads_own_weights", False):  # an ensemble loads one file per member
        network = network.to(device).eval()
    else:
        network = load_weights(network, path, device).eval()
    roi = getattr(inferer, "roi_size", None) or parser.get("roi_size")
    return BundleInference(
        bundle=bundle,
        network=network,
        preprocessing=preprocessing,
        inferer=inferer,
        postprocessing=parser.get("postprocessing"),
        roi_size=[int(v) for v in roi] if isinstance(roi, Sequence) else None,
        spatial_dims=_spatial_dims(parser.get("network_def", {}), network),
        parser=parser,
    )


def is_ensemble(bundle: Bundle) -> bool:
    """Whether the bundle is a cross-validation ensemble (``plans/ensemble.json``; one weights file
    per member under ``models/`` instead of ``models/model.pt``)."""
    return (bundle.root / "plans" / "ensemble.json").is_file()


def weight_files(bundle: Bundle) -> list[Path]:
    """The weights files a bundle runs with: ``models/model.pt``, or one per member of an ensemble."""
    if not is_ensemble(bundle):
        return [bundle.weights]
    import json

    record = json.loads((bundle.root / "plans" / "ensemble.json").read_text())
    return [bundle.root / member["weights"] for member in record.get("members", [])]


def _spatial_dims(declared: Any, network: Any) -> int:
    """``spatial_dims`` (or the older ``dimensions``) of ``network_def``, else the network's own, else 3."""
    dims = declared.get("spatial_dims", declared.get("dimensions")) if isinstance(declared, Mapping) else None
    return int(dims) if isinstance(dims, int) else int(getattr(network, "spatial_dims", 3) or 3)
