"""The whole procedure on a small real dataset: ``medseg train --cv`` (one member per non-test fold,
out-of-fold predictions, ``plans/cv.json``), ``medseg ensemble choose`` (each configuration and the
pair scored on folds 1-4), the ensemble bundle (``bundle check``, plain ``monai.bundle run``, one
output per test case, no fold-0 case in its datalists), ``medseg segment`` with it and ``--fast``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medseg.cli.main import main
from medseg.data import fold_of_cases

pytestmark = [pytest.mark.needs_data, pytest.mark.slow, pytest.mark.usefixtures("restore_root_logging")]

CASES = 15


@pytest.fixture
def cross_validated(msd_copy, tmp_path: Path) -> tuple[Path, Path, Path]:
    dataset = msd_copy(count=CASES)
    b3, b2 = tmp_path / "unet3d", tmp_path / "unet2d"
    assert main(["plan", str(dataset), "--output", str(b3), "--target", "cpu"]) == 0
    assert main(["plan", str(dataset), "--output", str(b2), "--target", "cpu", "--dims", "2"]) == 0
    for bundle in (b3, b2):
        assert main(["train", str(bundle), "--data", str(dataset), "--cv", "--epochs", "1", "--no-progress"]) == 0
    return dataset, b3, b2


def _ids(paths: list[str]) -> set[str]:
    return {Path(p).name.split(".")[0] for p in paths}


def test_cv_ensemble_choose_and_use(cross_validated, tmp_path: Path, capsys) -> None:
    dataset, b3, b2 = cross_validated
    ids = sorted(p.name.removesuffix(".nii.gz") for p in (dataset / "labelsTr").glob("*.nii.gz"))
    fold_of = fold_of_cases(ids)
    cv = json.loads((b3 / "plans" / "cv.json").read_text())
    assert sorted(cv["members"]) == ["1", "2", "3", "4"] and cv["cases"] == CASES - CASES // 5
    for k in (1, 2, 3, 4):  # each member predicted exactly its own fold
        oof = {p.name.removesuffix(".npz") for p in (b3 / "cv" / f"fold_{k}" / "oof").glob("*.npz")}
        assert oof == {c for c in ids if fold_of[c] == k}
    assert "## Cross-validation" in (b3 / "docs" / "README.md").read_text()
    assert main(["bundle", "check", str(b3)]) == 0  # re-rendered with its CV record

    # done members keep their weights, log and OOF predictions, not their resume checkpoints
    assert not any((b3 / "cv").glob("fold_*/checkpoints"))
    assert all((b3 / "cv" / f"fold_{k}" / "log.csv").is_file() for k in (1, 2, 3, 4))
    # finished members are not trained again
    mtime = (b3 / "cv" / "fold_1" / "models" / "model.pt").stat().st_mtime_ns
    assert main(["train", str(b3), "--data", str(dataset), "--cv", "--no-progress"]) == 0
    assert (b3 / "cv" / "fold_1" / "models" / "model.pt").stat().st_mtime_ns == mtime

    ensemble = tmp_path / "ensemble"
    capsys.readouterr()
    assert main(["ensemble", "choose", str(b3), str(b2), "--data", str(dataset), "--output", str(ensemble)]) == 0
    out = capsys.readouterr().out
    assert "unet3d + unet2d" in out and "chosen:" in out
    record = json.loads((ensemble / "plans" / "ensemble.json").read_text())
    assert len(record["choice"]["candidates"]) == 3  # each configuration and the pair
    members = record["members"]
    assert len(members) == 4 * len(record["configurations"])
    assert all((ensemble / m["weights"]).is_file() for m in members)
    assert main(["bundle", "check", str(ensemble)]) == 0

    train = json.loads((ensemble / "configs" / "train.json").read_text())
    assert {"train_datalist", "val_datalist"} <= set(train)
    from monai.bundle import ConfigParser

    parser = ConfigParser(train)
    parser["dataset_dir"] = str(dataset)
    for key in ("train_datalist", "val_datalist"):
        used = {item["case_id"] for item in parser.get_parsed_content(key)}
        assert used and all(fold_of[c] != 0 for c in used), key

    # plain MONAI: one output per test-fold case
    outputs = tmp_path / "inference"
    subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
         "--bundle_root", ".", "--dataset_dir", str(dataset), "--output_dir", str(outputs)],
        cwd=ensemble, check=True, capture_output=True,
    )  # fmt: skip
    written = sorted(p.name for p in outputs.glob("*.nii.gz"))
    test_cases = [c for c in ids if fold_of[c] == 0]
    assert written == [f"{c}_seg.nii.gz" for c in test_cases]

    image = dataset / "imagesTr" / f"{test_cases[0]}.nii.gz"
    for extra, count in (([], len(members)), (["--fast"], 1)):
        out_dir = tmp_path / f"segment{len(extra)}"
        assert main(["segment", str(image), "--bundle", str(ensemble), "--output", str(out_dir), *extra]) == 0
        settings = json.loads((out_dir / "report.json").read_text())["settings"]
        assert len(settings["members"]) == count


def test_cv_refuses_the_test_fold_and_single_run_flags(capsys) -> None:
    assert main(["train", "bundles/hippocampus_unet3d", "--cv", "--folds", "0"]) != 0
    assert "fold 0 is the test fold" in capsys.readouterr().err
    assert main(["train", "bundles/hippocampus_unet3d", "--cv", "--fold", "2"]) != 0
    assert "--cv trains every member" in capsys.readouterr().err


def test_choose_refuses_a_bundle_without_cross_validation(tmp_path: Path, capsys) -> None:
    # a copy of the shipped 2-D U-Net without its members (cv/ is never shipped): choose says how to make them
    bundle = tmp_path / "hippocampus_unet2d"
    shutil.copytree("bundles/hippocampus_unet2d", bundle, ignore=shutil.ignore_patterns("cv", "runs"))
    output = tmp_path / "unused"
    assert main(["ensemble", "choose", str(bundle), "--output", str(output)]) != 0
    err = capsys.readouterr().err
    assert "no cross-validation member for fold 1" in err and "--cv" in err
    assert not output.exists()


def test_export_refuses_an_ensemble(tmp_path: Path) -> None:
    from medseg.bundle import export_bundle, open_bundle
    from medseg.errors import BundleError

    root = tmp_path / "ensemble"
    (root / "configs").mkdir(parents=True)
    (root / "plans").mkdir()
    (root / "configs" / "metadata.json").write_text("{}")
    (root / "plans" / "ensemble.json").write_text("{}")
    with pytest.raises(BundleError, match="cross-validation ensemble"):
        export_bundle(open_bundle(root), "torchscript", tmp_path / "out.ts")
