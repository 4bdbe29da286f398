"""Batch segmentation (``medseg.segment.batch``) on the real hippocampus crops and MSD images.

* on a local two-node Ray cluster (``ray.cluster_utils.Cluster``, one CPU per node) one node is
  killed while it segments an input: that input is retried on the other node, every input is
  recorded once in ``manifest.jsonl``, a bad input (a series with a missing slice) is recorded as
  failed without stopping the batch, and every label map equals, voxel for voxel, the one the
  same batch writes in one process;
* a bundle that no worker can load stops the batch with the workers' own error;
* ``--resume`` runs only what is not done (a deleted result, the failed inputs) and the exit code
  is the number of failed inputs.

Ray's start-up is slow on two cores: one module-scoped cluster, one Ray run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.cli.main import main
from medseg.errors import MedsegError
from medseg.segment import BatchSettings, discover_inputs, read_manifest, run_batch
from medseg.segment.batch import MANIFEST

pytestmark = pytest.mark.needs_data

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "hippocampus_unet3d"
OBJECT_STORE = 80 * 2**20  # Ray's minimum is 75 MiB; results are small records


def _link_series(source: Path, target: Path, skip: int) -> Path:
    target.mkdir(parents=True)
    for index, path in enumerate(sorted(source.glob("*.dcm"), key=lambda p: int(p.stem))):
        if index != skip:
            (target / path.name).symlink_to(path)
    return target


@pytest.fixture(scope="module")
def inputs(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Three DICOM series, three MSD NIfTI images and a series with a missing slice."""
    crops = shared_data / "dicom" / "hippocampus-crops"
    images = sorted((shared_data / "msd-task04-hippocampus" / "imagesTr").glob("*.nii.gz"))[:3]
    broken = _link_series(crops / "Study2", tmp_path_factory.mktemp("bad") / "broken", skip=10)
    return [str(p) for p in [crops / "Study1", crops / "Study2", crops / "Study3", *images, broken]]


@pytest.fixture(scope="module")
def one_process(inputs: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The batch run in this process: the reference."""
    out = tmp_path_factory.mktemp("one_process")
    items, single = discover_inputs(inputs)
    assert not single and len(items) == 7
    result = run_batch(items, BUNDLE, out, settings=BatchSettings(progress=False))
    assert sorted(result.failures) == ["broken"] and len(result.results) == 6
    return out


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    # the head takes no work: both workers run on the two worker nodes, one CPU each
    head = {"num_cpus": 0, "object_store_memory": OBJECT_STORE, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    nodes = [cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE) for _ in range(2)]
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


def _voxels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    return np.asarray(image.dataobj), image.affine


def _manifest_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]


@pytest.mark.slow
def test_ray_batch_survives_a_killed_node_and_equals_one_process(
    inputs: list[str], one_process: Path, cluster, tmp_path: Path
) -> None:
    ray_cluster, nodes = cluster
    out = tmp_path / "ray"
    killed: list[str] = []

    def kill_a_busy_node(record: dict, busy: dict[str, str]) -> None:
        """After the first result, kill a node while its worker segments an input."""
        victims = [node for node in nodes if node.node_id in busy.values()]
        if not killed and victims:
            killed.append(victims[0].node_id)
            ray_cluster.remove_node(victims[0], allow_graceful=False)

    items, _ = discover_inputs(inputs)
    settings = BatchSettings(workers=2, ray_address=ray_cluster.address, progress=False, start_timeout_s=120)
    result = run_batch(items, BUNDLE, out, settings=settings, on_record=kill_a_busy_node)

    assert killed, "no node was busy when a result came back"
    assert result.retried >= 1
    lines = _manifest_lines(out)
    ids = sorted(line["id"] for line in lines)
    assert ids == sorted(item.name for item in items)  # every input recorded exactly once
    by_id = {line["id"]: line for line in lines}
    assert by_id["broken"]["status"] == "failed" and "missing slice" in by_id["broken"]["error"]
    assert any(line["attempt"] == 2 for line in lines)  # the killed node's input ran again
    assert all(line["worker"] != killed[0] for line in lines if line["attempt"] == 2)
    reference = read_manifest(one_process)
    for name, line in by_id.items():
        if name == "broken":
            continue
        assert line["status"] == "done", line
        assert line["outputs"] == reference[name]["outputs"]
        assert line["weights_sha256"] == reference[name]["weights_sha256"]
        assert line["bundle_version"] == reference[name]["bundle_version"]
        got, want = (
            _voxels(out / name / "segmentation.nii.gz"),
            _voxels(one_process / name / "segmentation.nii.gz"),
        )
        np.testing.assert_array_equal(got[0], want[0], err_msg=name)
        np.testing.assert_array_equal(got[1], want[1], err_msg=name)
    assert not [p for p in out.rglob(".*")], "a staging folder was left behind"


@pytest.mark.slow
def test_a_bundle_no_worker_can_load_stops_with_its_reason(
    inputs: list[str], cluster, tmp_path: Path
) -> None:
    ray_cluster, _ = cluster
    bundle = tmp_path / "hippocampus_unet3d"
    shutil.copytree(BUNDLE, bundle)
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["network_def"]["_target_"] = "NoSuchNetwork"
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    items, _ = discover_inputs(inputs[:2])
    settings = BatchSettings(workers=1, ray_address=ray_cluster.address, progress=False, max_attempts=1)
    with pytest.raises(MedsegError, match="no Ray worker could start") as raised:
        run_batch(items, bundle, tmp_path / "out", settings=settings)
    assert "NoSuchNetwork" in str(raised.value)
    assert not (tmp_path / "out" / MANIFEST).exists()  # nothing was segmented, nothing recorded


def test_resume_runs_only_what_is_not_done(
    inputs: list[str], one_process: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "resumed"
    shutil.copytree(one_process, out)
    shutil.rmtree(out / "Study3")  # as if the run had been stopped before Study3 was written
    with open(out / MANIFEST, "a") as manifest:
        manifest.write('{"id": "Study3", "status": "do')  # a line cut short by a kill
    missing = str(tmp_path / "missing.nii.gz")
    before = len(_manifest_lines(one_process))

    code = main(
        [
            "segment",
            *inputs,
            missing,
            "--bundle",
            str(BUNDLE),
            "--output",
            str(out),
            "--resume",
            "--no-progress",
        ]
    )
    stdout, stderr = capsys.readouterr()

    assert code == 2  # the number of failed inputs: the broken series and the missing file
    assert "segmented 1 of 8 inputs" in stdout and "5 done before, skipped" in stdout
    assert "broken:" in stderr and "missing:" in stderr and "does not exist" in stderr
    lines = (out / MANIFEST).read_text().splitlines()
    new = [json.loads(line) for line in lines[before + 1 :]]
    assert sorted(line["id"] for line in new) == ["Study3", "broken", "missing"]
    assert read_manifest(out)["Study3"]["status"] == "done"
    np.testing.assert_array_equal(
        _voxels(out / "Study3" / "segmentation.nii.gz")[0],
        _voxels(one_process / "Study3" / "segmentation.nii.gz")[0],
    )
