"""Image ids of uploads (medseg.serve.label.uploads): plain names only, never paths."""

from __future__ import annotations

import pytest

from medseg.serve.label.uploads import image_id_of
from medseg.serve.names import NameRefused


def test_image_id_comes_from_the_request_or_the_file_name():
    assert image_id_of("case_01", "whatever.nii.gz") == "case_01"
    assert image_id_of(None, "hippocampus_003.nii.gz") == "hippocampus_003"
    assert image_id_of("", "scan.nrrd") == "scan"
    assert image_id_of(None, "1.2.826.0.1.3680043.nii.gz") == "1.2.826.0.1.3680043"


@pytest.mark.parametrize(
    "bad", ["../escape", "a/b", "..", ".hidden", "", "x" * 200, "name with space", "a\x00b", "h\u00e9", "-rf"]
)
def test_image_id_that_is_not_a_plain_name_is_refused(bad):
    with pytest.raises(NameRefused, match="plain name"):
        image_id_of(bad or "..", "x.nii.gz")
