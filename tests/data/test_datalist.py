"""MSD datalists and the fixed 5-fold split on the real Task04 dataset.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.data import case_id, default_data_dir, load_msd_datalist, msd_labels, split_folds
from medseg.errors import InputError

pytestmark = pytest.mark.needs_data


def test_msd_datalist_reads_all_cases(hippocampus_dir: Path) -> None:
    items = load_msd_datalist(hippocampus_dir)
    assert len(items) == 260
    assert [i["case_id"] for i in items] == sorted(i["case_id"] for i in items)
    assert all(Path(i["image"]).is_file() and Path(i["label"]).is_file() for i in items)
    assert all(case_id(i["label"]) == i["case_id"] for i in items)
    assert msd_labels(hippocampus_dir) == {0: "background", 1: "Anterior", 2: "Posterior"}


def test_fixed_split_is_index_mod_5_of_sorted_ids(hippocampus_dir: Path) -> None:
    items = load_msd_datalist(hippocampus_dir)
    ids = sorted(i["case_id"] for i in items)
    folds = [split_folds(items, k) for k in range(5)]
    assert [len(f) for f in folds] == [52] * 5
    for k, fold in enumerate(folds):
        assert {i["case_id"] for i in fold} == {cid for n, cid in enumerate(ids) if n % 5 == k}
    train = split_folds(items, [1, 2, 3, 4])
    assert len(train) == 208
    assert not {i["case_id"] for i in train} & {i["case_id"] for i in folds[0]}
    # The split depends on the ids, not on the order the datalist comes in.
    assert split_folds(list(reversed(items)), 0) == list(reversed(folds[0]))
    assert folds[0][0]["case_id"] == "hippocampus_001"


def test_bad_fold_and_missing_files_are_clear_errors(hippocampus_dir: Path, tmp_path: Path) -> None:
    items = load_msd_datalist(hippocampus_dir)
    with pytest.raises(InputError, match="fold 7 does not exist"):
        split_folds(items, 7)
    with pytest.raises(InputError, match="no dataset.json"):
        load_msd_datalist(tmp_path)
    broken = json.loads((hippocampus_dir / "dataset.json").read_text())
    broken["training"] = broken["training"][:1]
    (tmp_path / "dataset.json").write_text(json.dumps(broken))
    with pytest.raises(InputError, match="missing"):
        load_msd_datalist(tmp_path)


def test_default_data_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDSEG_DATA_DIR", str(tmp_path))
    assert default_data_dir("msd-task04-hippocampus") == str(tmp_path / "msd-task04-hippocampus")
