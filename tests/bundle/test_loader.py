"""The one bundle loader (medseg.bundle.loader): checkpoint unwrapping, wrong checkpoints, one config parse."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from medseg.bundle import (
    STATE_DICT_KEYS,
    load_inference,
    load_weights,
    open_bundle,
    read_inference_config,
    read_state_dict,
)
from medseg.errors import BundleError

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"


@pytest.fixture(scope="module")
def unet3d():
    return open_bundle(BUNDLES / "hippocampus_unet3d")


@pytest.fixture(scope="module")
def state(unet3d) -> dict[str, torch.Tensor]:
    return dict(torch.load(unet3d.weights, map_location="cpu", weights_only=True))


def _network(bundle):
    return read_inference_config(bundle).get_parsed_content("network_def", instantiate=True)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message, message
    return message


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        *[lambda sd, key=key: {key: sd, "epoch": 3} for key in STATE_DICT_KEYS],
        lambda sd: {"model": {"state_dict": sd}},  # "model" is looked up first, then "state_dict"
    ],
    ids=["bare", *STATE_DICT_KEYS, "model+state_dict"],
)
def test_checkpoint_wrappers_are_unwrapped(wrap, state: dict, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(state), path)
    got = read_state_dict(path)
    assert list(got) == list(state)
    for key, value in state.items():
        torch.testing.assert_close(got[key], value)


def test_weights_load_into_the_network_and_move_to_the_device(unet3d, state: dict, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"model": state}, path)  # what MONAI's CheckpointSaver writes
    network = load_weights(_network(unet3d), path, "cpu")
    for key, value in network.state_dict().items():
        torch.testing.assert_close(value, state[key])


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"not a torch file at all", "cannot load the weights"),
        (None, "holds no state dict"),  # a pickled list of tensors
        ("truncated", "cannot load the weights"),
    ],
)
def test_unusable_checkpoint_is_a_one_line_bundle_error(content, needle: str, unet3d, tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save([torch.zeros(2)], path)
    elif content == "truncated":
        data = unet3d.weights.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(BundleError) as info:
        read_state_dict(path)
    assert needle in _one_line(info)


def test_missing_checkpoint_is_a_bundle_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not found"):
        read_state_dict(tmp_path / "absent.pt")


def test_weights_of_another_network_are_a_one_line_bundle_error(unet3d, tmp_path: Path) -> None:
    other = open_bundle(BUNDLES / "hippocampus_unet2d")
    path = tmp_path / "unet2d.pt"
    torch.save(torch.load(other.weights, map_location="cpu", weights_only=True), path)
    with pytest.raises(BundleError) as info:
        load_weights(_network(unet3d), path)
    assert "do not fit the bundle's network_def" in _one_line(info)


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    """weights_only=True: a checkpoint that runs code when unpickled is not loaded."""

    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model": Payload()}))
    with pytest.raises(BundleError, match="cannot load the weights"):
        read_state_dict(path)


@pytest.mark.parametrize(
    ("name", "roi", "dims", "inferer"),
    [
        ("hippocampus_unet3d", [40, 56, 40], 3, "SlidingWindowInferer"),
        ("hippocampus_unet2d", [40, 56], 2, "SliceInferer"),
    ],
)
def test_load_inference_builds_everything_from_one_parse(name, roi, dims, inferer) -> None:
    from monai import inferers

    bundle = open_bundle(BUNDLES / name)
    loaded = load_inference(bundle)
    assert isinstance(loaded.inferer, getattr(inferers, inferer))
    assert loaded.roi_size == roi and loaded.spatial_dims == dims
    assert not loaded.network.training
    assert loaded.parser["bundle_root"] == str(bundle.root)
    assert callable(loaded.preprocessing) and loaded.postprocessing is not None
    expected = torch.load(bundle.weights, map_location="cpu", weights_only=True)
    for key, value in loaded.network.state_dict().items():
        torch.testing.assert_close(value, expected[key])


def test_load_inference_adjust_runs_before_anything_is_built(unet3d) -> None:
    seen = []

    def adjust(parser) -> None:
        seen.append(parser["bundle_root"])
        parser["roi_size"] = [32, 32, 32]

    loaded = load_inference(unet3d, adjust=adjust)
    assert seen == [str(unet3d.root)] and loaded.roi_size == [32, 32, 32]


def test_load_inference_with_missing_weights_is_a_bundle_error(unet3d, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no weights"):
        load_inference(unet3d, weights=tmp_path / "absent.pt")


@pytest.mark.parametrize(
    "name",
    sorted(
        p.parents[1].name
        for p in BUNDLES.glob("*/configs/evaluate.json")
        if not (p.parents[1] / "plans" / "ensemble.json").is_file()  # members load their own weights
    ),
)
def test_evaluate_names_its_checkpoint_loader(name: str) -> None:
    """medseg evaluate --weights overrides ``checkpointloader#load_path``, never a handler position."""
    from monai.bundle import ConfigParser

    bundle = open_bundle(BUNDLES / name)
    evaluate = json.loads(bundle.config("evaluate").read_text())
    assert evaluate["checkpointloader"]["_target_"] == "CheckpointLoader"
    assert "@checkpointloader" in evaluate["validate#handlers"]
    parser = ConfigParser()
    parser.read_config([str(bundle.config("train")), str(bundle.config("evaluate"))])
    parser["bundle_root"] = str(bundle.root)
    assert parser["validate#handlers"][0] == "@checkpointloader"
    parser["checkpointloader#load_path"] = "other/model.pt"
    assert parser.get_parsed_content("checkpointloader#load_path") == "other/model.pt"


def test_evaluate_weights_reach_the_named_checkpoint_loader(unet3d, tmp_path: Path) -> None:
    from medseg.bundle import run_workflow

    weights = tmp_path / "model.pt"
    weights.write_bytes(unet3d.weights.read_bytes())
    workflow = run_workflow(
        unet3d,
        ["train.json", "evaluate.json"],
        workflow_type="eval",
        run=False,
        **{"checkpointloader#load_path": str(weights)},
    )
    handlers = workflow.parser.get_parsed_content("validate#handlers")
    assert type(handlers[0]).__name__ == "CheckpointLoader"
    assert handlers[0].load_path == str(weights)


def test_an_ensemble_has_no_single_weights_to_override(tmp_path: Path) -> None:
    """An ensemble's evaluate.json loads no checkpoint (each member's file is loaded by network_def), so
    ``medseg evaluate --weights`` is refused for it instead of being silently ignored."""
    from medseg.bundle import evaluate_bundle

    root = BUNDLES / "hippocampus_ensemble"
    evaluate = json.loads((root / "configs" / "evaluate.json").read_text())
    assert "checkpointloader" not in evaluate and "@checkpointloader" not in evaluate["validate#handlers"]
    assert (
        evaluate["ensemble_def"]["_target_"] == "medseg.ensemble.network.bundle_network"
    )  # inference.json's
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"")
    with pytest.raises(BundleError, match="ensemble"):
        evaluate_bundle(open_bundle(root), weights=weights)
