"""Interactive bundles served as MONAI Label's DeepEdit type (medseg.serve.label.interactive), over HTTP.

A real server in the MONAI Label venv serves ``bundles/hippocampus_interactive`` and
``bundles/left_atrium_interactive``; for each, a fold-0 case (never trained on) is uploaded with no
clicks, then with the click the protocol's simulated user makes
(medseg.interactive.protocol.next_click), the way 3D Slicer sends it; bad clicks get 4xx with a message.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.serve import REPO_ROOT, call, fold_cases, label_python, make_msd_studies, read_nifti_bytes

from medseg.bundle import open_bundle
from medseg.data import split_folds
from medseg.data.dataset import load_datalist
from medseg.interactive.protocol import next_click
from medseg.interactive.session import ClickPredictor
from medseg.serve.launcher import LabelServer
from medseg.serve.workdir import discover_bundles, prepare_workdir

pytestmark = [pytest.mark.slow, pytest.mark.needs_data, pytest.mark.needs_label_venv]

MODEL = "hippocampus_interactive"
# each shipped interactive bundle: its dataset folder and its click names by label value
SERVED = {
    MODEL: (
        "msd-task04-hippocampus",
        {0: "background", 1: "anterior hippocampus", 2: "posterior hippocampus"},
    ),
    "left_atrium_interactive": ("la2018-left-atrium", {0: "background", 1: "left_atrium"}),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory, hippocampus_dir: Path):
    root = tmp_path_factory.mktemp("serve-interactive")
    case = fold_cases(hippocampus_dir, 0)[0]
    studies = make_msd_studies(hippocampus_dir, root / "studies", [case])
    prepared = prepare_workdir(
        root / "work", str(studies), discover_bundles(REPO_ROOT / "bundles", list(SERVED))
    )
    server = LabelServer(label_python(), prepared, log=root / "server.log", infer_workers=1)
    server.start()
    try:
        server.wait_ready(timeout=420)
        yield {"url": server.url, "case": case}
    finally:
        server.stop()


def _infer(url: str, image: Path, params: dict, model: str = MODEL):
    return call(
        "POST",
        f"{url}/infer/{model}?output=image",
        fields={"params": json.dumps(params)},
        files={"file": (image.name, image.read_bytes())},
        timeout=300,
    )


@pytest.mark.timeout(900)
@pytest.mark.parametrize("model", list(SERVED))
def test_deepedit_model_takes_clicks_over_http(served, shared_data: Path, model: str):
    import nibabel as nib

    url = served["url"]
    folder, names = SERVED[model]
    case = split_folds(load_datalist(shared_data / folder), 0)[0]
    info = call("GET", f"{url}/info/").json()["models"][model]
    assert info["type"] == "deepedit"  # 3D Slicer's MONAI Label module offers its point tools
    assert info["labels"] == {name: value for value, name in names.items()}
    image = Path(case["image"])
    truth = np.rint(np.asarray(nib.load(case["label"]).dataobj)).astype(int)
    empty = {name: [] for name in info["labels"]}
    first = _infer(url, image, empty, model)
    assert first.status == 200, first.detail
    automatic, affine = read_nifti_bytes(first.body)
    assert automatic.shape == truth.shape and np.allclose(affine, nib.load(image).affine, atol=1e-4)
    name, point = next_click(np.rint(automatic).astype(int), truth, names)
    second = _infer(url, image, {**empty, name: [point]}, model)
    assert second.status == 200, second.detail
    corrected = np.rint(read_nifti_bytes(second.body)[0]).astype(int)
    errors = lambda pred: int((pred != truth).sum())  # noqa: E731
    assert errors(corrected) < errors(np.rint(automatic).astype(int))
    # the served answer is the click protocol's (same clicks on the stored array, same bundle)
    local = ClickPredictor(open_bundle(REPO_ROOT / "bundles" / model))
    prepared = local.prepare(str(image))
    assert np.mean(local.predict(prepared, {name: [point]}) == corrected) > 0.999
    assert np.mean(local.predict(prepared, {}) == np.rint(automatic).astype(int)) > 0.999


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"hippocampus": [[1, 2, 3]]}, "unknown label 'hippocampus'"),
        ({"anterior hippocampus": [[1, 2]]}, "[i, j, k]"),
        ({"anterior hippocampus": [[1.5, 2, 3]]}, "integer voxel indices"),
        ({"anterior hippocampus": [[1000, 2, 3]]}, "outside the image"),
        ({"background": [[1, 2, 3]] * 5000}, "too many clicks"),
    ],
)
def test_bad_clicks_get_4xx_with_a_message(served, hippocampus_dir: Path, params, words):
    response = _infer(served["url"], hippocampus_dir / "imagesTr" / f"{served['case']}.nii.gz", params)
    assert 400 <= response.status < 500 and words in response.detail, (response.status, response.detail)
