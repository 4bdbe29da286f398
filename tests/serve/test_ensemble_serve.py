"""An ensemble bundle served by ``medseg serve``: listed with its members, inference through the
MONAI Label REST API runs every member (their weights loaded by the bundle's ``network_def``) and
returns a label map on the image's grid; an ensemble is not offered for fine-tuning; the next sample
by disagreement is the unlabelled image its members disagree on most, and a model without members
is refused with a message."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from support.serve import (
    REPO_ROOT,
    call,
    fold_cases,
    label_python,
    make_msd_studies,
    mean_dice,
    read_nifti_bytes,
)

from medseg.serve.launcher import LabelServer
from medseg.serve.workdir import prepare_workdir, select_bundles

pytestmark = [pytest.mark.slow, pytest.mark.needs_data, pytest.mark.needs_label_venv]

ENSEMBLE = Path(os.environ.get("MEDSEG_TEST_ENSEMBLE", REPO_ROOT / "bundles" / "hippocampus_ensemble"))


@pytest.mark.timeout(900)
def test_an_ensemble_is_served_for_inference(tmp_path: Path, hippocampus_dir: Path) -> None:
    import nibabel as nib

    if not (ENSEMBLE / "plans" / "ensemble.json").is_file():
        pytest.fail(f"{ENSEMBLE} is not an ensemble bundle")
    case = fold_cases(hippocampus_dir, 0)[0]
    unlabelled = fold_cases(hippocampus_dir, 1)[:2]  # never fold 0 for a decision; here only scored
    studies = make_msd_studies(hippocampus_dir, tmp_path / "studies", [case, *unlabelled])
    for image in unlabelled:
        (studies / "labelsTr" / f"{image}.nii.gz").unlink()
    single = str(REPO_ROOT / "bundles" / "hippocampus_unet3d")
    prepared = prepare_workdir(tmp_path / "work", str(studies), select_bundles([str(ENSEMBLE), single]))
    server = LabelServer(label_python(), prepared, log=tmp_path / "server.log", infer_workers=1)
    server.start()
    try:
        server.wait_ready(timeout=420)
        info = call("GET", f"{server.url}/info/").json()
        model = info["models"][ENSEMBLE.name]
        assert model["weights"] == "ensemble" and len(model["members"]) >= 2
        assert ENSEMBLE.name not in info.get("trainers", {})
        response = call(
            "POST", f"{server.url}/infer/{ENSEMBLE.name}?image={case}&output=image",
            fields={"params": "{}"}, timeout=300,
        )  # fmt: skip
        assert response.status == 200, response.detail
        pred, affine = read_nifti_bytes(response.body)
        image = nib.load(hippocampus_dir / "imagesTr" / f"{case}.nii.gz")
        assert pred.shape == image.shape
        np.testing.assert_allclose(affine, image.affine, atol=1e-4)
        truth = np.rint(np.asarray(nib.load(hippocampus_dir / "labelsTr" / f"{case}.nii.gz").dataobj)).astype(
            int
        )
        if ENSEMBLE.parent == REPO_ROOT / "bundles":  # the shipped, trained ensemble
            assert mean_dice(np.rint(pred).astype(int), truth) >= 0.8

        assert "disagreement" in info["strategies"]
        sample = call("POST", f"{server.url}/activelearning/disagreement", json_body={}, timeout=600)
        assert sample.status == 200, sample.detail
        chosen = sample.json()
        cache = json.loads((tmp_path / "work" / "activelearning" / f"{ENSEMBLE.name}.json").read_text())
        assert set(cache["scores"]) == set(unlabelled)  # the labelled image is not a candidate
        assert chosen["id"] == max(unlabelled, key=lambda i: (cache["scores"][i], i))
        assert 0.0 <= chosen["disagreement"] <= 1.0 and chosen["model"] == ENSEMBLE.name
        again = call("POST", f"{server.url}/activelearning/disagreement", json_body={}, timeout=60)
        assert again.status == 200 and again.json()["id"] == chosen["id"]  # from the cache
        refused = call(
            "POST", f"{server.url}/activelearning/disagreement", json_body={"model": "hippocampus_unet3d"}
        )
        assert refused.status == 409 and "no cross-validation members" in refused.detail
    finally:
        server.stop()
