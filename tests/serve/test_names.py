"""The one rule for names that reach paths (:mod:`medseg.serve.names`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medseg.serve.names import FINAL, ORIGINAL, NameRefused, inside, label_tag, plain_name


@pytest.mark.parametrize("good", ["hippocampus_004", "1.2.826.0.1.3680043.8.498.1", "Case-7.b", "a" * 128])
def test_plain_names_pass(good):
    assert plain_name(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "",
        ".",
        "..",
        "../x",
        "a/../b",
        "/abs",
        "a/b",
        "a\\b",
        ".hidden",
        "-rf",
        "x\x00y",
        "h\u00e9",
        "a b",
        "a" * 129,
        "x" * 10_000,
        "a..b",
        None,
        7,
    ],
)
def test_anything_else_is_refused_with_what_a_name_may_hold(bad):
    with pytest.raises(NameRefused, match="plain name") as info:
        plain_name(bad, "image id")
    assert info.value.status == 400 and "image id" in str(info.value)
    assert len(str(info.value)) < 400  # a 10 kB id is not echoed back whole


def test_label_tags_come_from_a_fixed_set():
    assert label_tag("") == FINAL and label_tag(None) == FINAL
    assert label_tag("final") == FINAL and label_tag("original") == ORIGINAL
    for bad in ("..", "/tmp", "draft", "Final", "final/../x"):
        with pytest.raises(NameRefused, match="final, original"):
            label_tag(bad)


def test_inside_resolves_links_and_refuses_what_leaves_the_root(tmp_path: Path):
    root = tmp_path / "root"
    (root / "labels").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", root / "labels" / "out")
    assert inside(root, "labels", "x.nii.gz") == (root / "labels" / "x.nii.gz").resolve()
    for parts in (("..", "x"), ("/etc", "passwd"), ("labels", "out", "x")):
        with pytest.raises(NameRefused, match="outside"):
            inside(root, *parts)
