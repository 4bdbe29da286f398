"""A MONAI bundle on disk and running its configs with MONAI's ``ConfigWorkflow``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import BundleError
from medseg.paths import resolve_bundle_path

__all__ = ["Bundle", "open_bundle", "run_workflow", "REQUIRED_FILES"]

REQUIRED_FILES = (
    "configs/metadata.json",
    "configs/train.json",
    "configs/evaluate.json",
    "configs/inference.json",
    "configs/multi_gpu_train.json",
    "configs/logging.conf",
    "docs/README.md",
    "LICENSE",
)


@dataclass
class Bundle:
    """A bundle folder with its metadata.

    Attributes:
        root: bundle folder (holding ``configs/``, ``models/``, ``docs/``).
        metadata: parsed ``configs/metadata.json``.
    """

    root: Path
    metadata: dict[str, Any] = field(repr=False)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "unknown"))

    @property
    def weights(self) -> Path:
        return self.root / "models" / "model.pt"

    def config(self, name: str) -> Path:
        """Path of ``configs/<name>`` (``.json`` added when missing)."""
        filename = name if Path(name).suffix else f"{name}.json"
        path = self.root / "configs" / filename
        if not path.is_file():
            raise BundleError(f"bundle {self.name} has no configs/{filename}")
        return path

    @property
    def labels(self) -> dict[int, str]:
        """Output label values and names from ``network_data_format.outputs.pred.channel_def``.

        Raises:
            BundleError: the metadata has no ``channel_def``.
        """
        try:
            channel_def = self.metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
            return {int(k): str(v) for k, v in channel_def.items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(
                f"bundle {self.name}: configs/metadata.json needs network_data_format.outputs.pred.channel_def "
                "mapping label values to names"
            ) from exc

    @property
    def _inputs(self) -> dict[str, Any]:
        return self.metadata.get("network_data_format", {}).get("inputs", {}) or {}

    @property
    def input_key(self) -> str:
        """The network input's key in ``network_data_format.inputs`` (``image`` when none is declared)."""
        return next(iter(self._inputs), "image")

    @property
    def input_format(self) -> dict[str, Any]:
        """``network_data_format.inputs.image`` (modality, channels, spacing ...); empty when not declared."""
        return self._inputs.get("image", {})


def open_bundle(path: str | os.PathLike) -> Bundle:
    """Open a bundle folder, or a bundle name under a bundles folder (:mod:`medseg.paths`).

    Raises:
        BundleError: the folder does not exist or lacks ``configs/metadata.json``.
    """
    root = resolve_bundle_path(path) or Path(path)
    if not root.is_dir():
        raise BundleError(f"bundle folder {path} not found: give a path such as bundles/hippocampus_unet3d")
    meta_path = root / "configs" / "metadata.json"
    if not meta_path.is_file():
        raise BundleError(f"{root} is not a MONAI bundle: configs/metadata.json is missing")
    try:
        metadata = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{meta_path} is not valid JSON: {exc}") from exc
    return Bundle(root=root.resolve(), metadata=metadata)


def run_workflow(
    bundle: Bundle,
    configs: list[str],
    workflow_type: str = "train",
    run: bool = True,
    **overrides: Any,
):
    """Build (and by default run) a MONAI ``ConfigWorkflow`` from the bundle's configs.

    Later configs override earlier ones, as with ``python -m monai.bundle run --config_file``.
    ``bundle_root`` is set to the bundle folder, so the run does not depend on the cwd.

    Returns:
        the initialized (and run) ``monai.bundle.ConfigWorkflow``; its ``parser`` gives access
        to the engines and their ``state.metrics``.
    """
    from monai.bundle import ConfigWorkflow

    config_files = [str(bundle.config(name)) for name in configs]
    workflow = ConfigWorkflow(
        config_file=config_files,
        meta_file=str(bundle.config("metadata.json")),
        logging_file=str(bundle.config("logging.conf")),
        workflow_type=workflow_type,
        bundle_root=str(bundle.root),
        **overrides,
    )
    workflow.initialize()
    if run:
        workflow.run()
        workflow.finalize()
    return workflow
