"""Routing rules of the DICOM node (``medseg.node.routing``) on real series headers."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from medseg.errors import ConfigError
from medseg.node.routing import choose_route, header_value, no_route_reason, parse_route

pytestmark = [pytest.mark.needs_data]

REPO = Path(__file__).resolve().parents[2]


def _first(folder: Path) -> pydicom.Dataset:
    return pydicom.dcmread(min(folder.rglob("*.dcm")), stop_before_pixels=True)


@pytest.fixture(scope="module")
def headers(shared_data: Path) -> dict[str, pydicom.Dataset]:
    dicom = shared_data / "dicom"
    return {
        "hippo": _first(dicom / "hippocampus-crops" / "Study1"),  # MR 'HippoCrop', patient PGBM-002
        "t1post": _first(dicom / "brain-mr" / "study1-t1post"),  # MR 'T1post'
        "ct": _first(dicom / "ct-liver-seg" / "ct-3slice"),  # CT
    }


def test_first_matching_route_wins(headers: dict[str, pydicom.Dataset]) -> None:
    routes = [
        parse_route("Modality=mr , SeriesDescription~^hippo,PatientID=PGBM-999:hippocampus_unet2d"),
        parse_route("Modality=MR,SeriesDescription~HIPPO:hippocampus_unet3d"),  # values ignore case
        parse_route("Modality=MR:hippocampus_deeplab3d"),
        parse_route(f"*:{REPO / 'bundles' / 'hippocampus_unet2d'}"),  # any series; a bundle path
    ]
    assert [r.bundle.name for r in routes] == [
        "hippocampus_unet2d", "hippocampus_unet3d", "hippocampus_deeplab3d", "hippocampus_unet2d",
    ]  # fmt: skip
    assert choose_route(routes, headers["hippo"]) is routes[1]  # the PatientID of rule 1 differs
    assert choose_route(routes, headers["t1post"]) is routes[2]
    assert choose_route(routes, headers["ct"]) is routes[3]
    assert (
        routes[3].rule == "*" and str(routes[1]) == "Modality=MR,SeriesDescription~HIPPO:hippocampus_unet3d"
    )


def test_a_series_no_rule_matches_gets_the_reason(headers: dict[str, pydicom.Dataset]) -> None:
    routes = [
        parse_route("Modality=MR,SeriesDescription~hippo:hippocampus_unet3d"),
        parse_route("Modality=CT,BodyPartExamined=LIVER:hippocampus_unet2d"),
    ]
    assert choose_route(routes, headers["t1post"]) is None
    assert no_route_reason(routes, headers["t1post"]) == (
        "no route matches this series (Modality='MR', SeriesDescription='T1post', BodyPartExamined='BRAIN');"
        " routes: Modality=MR,SeriesDescription~hippo; Modality=CT,BodyPartExamined=LIVER"
    )
    assert header_value(headers["ct"], "BodyPartExamined") is None  # absent: no condition on it holds
    assert choose_route(routes, headers["ct"]) is None
    assert header_value(headers["t1post"], "ImageType") == "ORIGINAL\\PRIMARY\\OTHER"
    assert choose_route([parse_route("ImageType~primary:hippocampus_unet3d")], headers["t1post"]) is not None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Modality=MR", "route must be CONDITIONS:BUNDLE"),
        ("Modality=MR:", "route must be CONDITIONS:BUNDLE"),
        ("Modalty=MR:hippocampus_unet3d", "'Modalty' is not a DICOM keyword"),
        ("Modality>MR:hippocampus_unet3d", "must be Keyword=value or Keyword~regex"),
        ("SeriesDescription~[hip:hippocampus_unet3d", "bad regular expression"),
        ("Modality=MR:no_such_bundle", "no bundle folder 'no_such_bundle'"),
    ],
)
def test_bad_routes_are_refused_with_what_to_do(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_route(text)
    assert caught.value.param == "route"
