"""Library errors name Python parameters; the CLI names the flag that sets them (medseg.errors, cli.main)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from medseg.cli.main import error_message, flag_of, main
from medseg.errors import BundleError, ConfigError, InputError, MedsegError, SeriesSelectionError

pytestmark = pytest.mark.needs_data

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "hippocampus_unet3d"
FLAGS = ("--overlap", "--force", "--series", "--epochs", "--weights", "--fold", "--device", "--data")


def _no_flag(message: str) -> None:
    assert not any(flag in message for flag in FLAGS), message


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    code = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code != 0 and len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConfigError("overlap must be in [0, 1), got 1.2", param="overlap"), "--overlap must be in [0, 1)"),
        (InputError("bad; use force=True to go on", param="force"), "bad; use --force to go on"),
        (SeriesSelectionError("choose one with series_uid: a; b", param="series_uid"), "with --series: a"),
        (ConfigError("no such setting", param="sw_batch_size"), "--sw-batch-size: no such setting"),
        (BundleError("nothing to map"), "nothing to map"),
    ],
)
def test_the_cli_renders_the_parameter_as_its_flag(exc: MedsegError, expected: str) -> None:
    assert expected in error_message(exc)
    _no_flag(str(exc))


def test_flag_names() -> None:
    assert flag_of("overlap") == "--overlap"
    assert flag_of("series_uid") == "--series"
    assert flag_of("data_dir") == "--data"
    assert flag_of("sw_batch_size") == "--sw-batch-size"


def test_param_survives_pickling() -> None:
    """Errors cross process boundaries (the forked SEG writer, the serve workers) with their param."""
    exc = pickle.loads(pickle.dumps(ConfigError("overlap must be in [0, 1)", param="overlap")))
    assert exc.param == "overlap" and str(exc) == "overlap must be in [0, 1)"


def test_segmenter_overlap_from_python_and_from_the_cli(shared_data: Path, tmp_path: Path, capsys) -> None:
    from medseg.segment import Segmenter

    study = str(shared_data / "dicom" / "hippocampus-crops" / "Study1")
    with pytest.raises(ConfigError) as info:
        Segmenter(BUNDLE, overlap=1.2)
    assert info.value.param == "overlap" and "overlap must be in [0, 1)" in str(info.value)
    _no_flag(str(info.value))
    with pytest.raises(ConfigError, match="device") as info:
        Segmenter(BUNDLE, device="tpu")
    _no_flag(str(info.value))

    line = _cli_error(
        ["segment", study, "--bundle", str(BUNDLE), "--output", str(tmp_path / "o"), "--overlap", "1.2"],
        capsys,
    )
    assert "--overlap must be in [0, 1)" in line
    line = _cli_error(
        ["segment", study, "--bundle", str(BUNDLE), "--output", str(tmp_path / "o"), "--device", "tpu"],
        capsys,
    )
    assert "--device" in line


def test_series_uid_on_non_dicom_from_python_and_from_the_cli(
    shared_data: Path, tmp_path: Path, capsys
) -> None:
    from medseg.segment import discover_inputs

    nifti = sorted((shared_data / "msd-task04-hippocampus" / "imagesTr").glob("*.nii.gz"))[0]
    with pytest.raises(InputError, match="DICOM input only") as info:
        discover_inputs(nifti, "1.2.3")
    _no_flag(str(info.value))
    line = _cli_error(
        [
            "segment",
            str(nifti),
            "--series",
            "1.2.3",
            "--bundle",
            str(BUNDLE),
            "--output",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert "--series applies to DICOM input only" in line


def test_several_series_from_python_and_from_the_cli(shared_data: Path, tmp_path: Path, capsys) -> None:
    from medseg.io import load_image

    study = shared_data / "dicom" / "hippocampus-crops"
    with pytest.raises(SeriesSelectionError) as info:
        load_image(study)
    assert "series_uid" in str(info.value)
    _no_flag(str(info.value))
    line = _cli_error(["convert", str(study), str(tmp_path / "out.nii.gz")], capsys)
    assert "--series" in line


def test_unsuitable_input_from_python_and_from_the_cli(shared_data: Path, tmp_path: Path, capsys) -> None:
    from medseg.segment import Segmenter, UnsuitableInputError

    ct = shared_data / "dicom" / "ct-liver-seg" / "23x38x3" / "image"
    with pytest.raises(UnsuitableInputError, match="force=True") as info:
        Segmenter(BUNDLE).run(ct, tmp_path / "py")
    _no_flag(str(info.value))
    line = _cli_error(["segment", str(ct), "--bundle", str(BUNDLE), "--output", str(tmp_path / "o")], capsys)
    assert "use --force to segment it anyway" in line


def test_fold_epochs_weights_from_python_and_from_the_cli(tmp_path: Path, capsys) -> None:
    from medseg.bundle import evaluate_bundle, open_bundle, train_bundle
    from medseg.data.datalist import DEFAULT_NUM_FOLDS

    bundle = open_bundle(BUNDLE)
    with pytest.raises(InputError, match=f"choose 0..{DEFAULT_NUM_FOLDS - 1}") as info:
        evaluate_bundle(bundle, fold=DEFAULT_NUM_FOLDS)
    _no_flag(str(info.value))
    with pytest.raises(InputError, match="epochs must be at least 1") as info:
        train_bundle(bundle, epochs=0)
    _no_flag(str(info.value))
    with pytest.raises(BundleError, match="not found") as info:
        evaluate_bundle(bundle, weights=tmp_path / "absent.pt")
    _no_flag(str(info.value))

    assert "--fold" in _cli_error(["evaluate", str(BUNDLE), "--fold", str(DEFAULT_NUM_FOLDS)], capsys)
    assert "--epochs must be at least 1" in _cli_error(["train", str(BUNDLE), "--epochs", "0"], capsys)
    assert "--weights" in _cli_error(
        ["evaluate", str(BUNDLE), "--weights", str(tmp_path / "absent.pt")], capsys
    )
    assert "--data" in _cli_error(["evaluate", str(BUNDLE), "--data", str(tmp_path)], capsys)


def test_multilabel_bundle_is_refused_from_the_parsed_postprocessing(tmp_path: Path) -> None:
    """A sigmoid written as an expression ("$True") is found too: the parsed config is looked at."""
    from medseg.segment import Segmenter

    root = tmp_path / "multilabel"
    shutil.copytree(BUNDLE / "configs", root / "configs")
    (root / "models").mkdir()
    (root / "models" / "model.pt").symlink_to(BUNDLE / "models" / "model.pt")
    path = root / "configs" / "inference.json"
    config = json.loads(path.read_text())
    config["postprocessing"]["transforms"][0] = {
        "_target_": "Activationsd",
        "keys": "pred",
        "sigmoid": "$True",
    }
    path.write_text(json.dumps(config))
    with pytest.raises(BundleError, match="sigmoid"):
        Segmenter(root)


def test_str_names_the_flag_only_inside_flag_names() -> None:
    from medseg.errors import flag_names

    exc = InputError("use force=True to go on", param="force")
    with flag_names(flag_of):
        assert str(exc) == "use --force to go on"
    assert str(exc) == "use force=True to go on"


def test_batch_failure_lines_name_the_flag(shared_data: Path, tmp_path: Path, capsys) -> None:
    """Failures a batch collects as text are rendered while the CLI runs: they name --force too."""
    batch = tmp_path / "in"
    for name, source in [
        ("ct", shared_data / "dicom" / "ct-liver-seg" / "23x38x3" / "image"),
        ("mr", shared_data / "dicom" / "hippocampus-crops" / "Study1"),
    ]:
        (batch / name).mkdir(parents=True)
        for path in source.iterdir():
            (batch / name / path.name).symlink_to(path)
    code = main(
        ["segment", str(batch), "--bundle", str(BUNDLE), "--output", str(tmp_path / "o"), "--no-progress"]
    )
    err = capsys.readouterr().err
    assert code == 1
    failure = next(line for line in err.splitlines() if line.strip().startswith("ct:"))
    assert "use --force to segment it anyway" in failure
