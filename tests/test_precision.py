"""medseg.precision: CPU flags, the auto rule, the Autocast wrapper, and bf16 against fp32 on real data.

The accuracy checks compare the two precisions on the same cases: each shipped bundle's fold-0 Dice
(a CI-sized subset here; every fold-0 case in ``benchmarks/precision.py``) and the agreement of the
two label maps on the 512x512x139 chest CT. They need a CPU with bf16 units (AMX or AVX-512-BF16):
elsewhere bf16 is emulated, so slow that ``auto`` never picks it, and they are skipped with that
reason while the fp32 path stays covered by the other tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

from medseg.bundle import evaluate_bundle, open_bundle
from medseg.bundle.loader import is_ensemble, weight_files
from medseg.bundle.train import _merged_config
from medseg.errors import ConfigError
from medseg.networks import Autocast, ChannelsLast
from medseg.precision import (
    PRECISION_ENV,
    Precision,
    bf16_units,
    cpu_flags,
    cpu_model,
    precision_overrides,
    resolve_precision,
    with_precision,
)

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(
    p.name
    for p in (REPO / "bundles").iterdir()
    if (p / "configs" / "metadata.json").is_file()
    and all(f.is_file() for f in weight_files(open_bundle(p)))
)
HAS_BF16 = bool(bf16_units())
needs_bf16 = pytest.mark.skipif(
    not HAS_BF16,
    reason="this CPU has no bf16 units (amx_bf16 / avx512_bf16): bf16 would be emulated and auto never "
    "uses it; the fp32 path is what runs here and the other tests check it",
)
# cases of fold 0 per bundle compared here (the benchmark compares all of them); an ensemble runs
# 8 to 16 networks per case, so it gets fewer
SUBSET, ENSEMBLE_SUBSET = 8, 4
# sliding-window overlap for the chest CT (0.5 in the bundle): a third of the windows, same comparison
CT_OVERLAP = 0.25
# largest |mean Dice(bf16) - mean Dice(fp32)| accepted
DICE_TOLERANCE = 0.002

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni
"""


def _small_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(3, 1, 3, (8, 16, 32), (2, 2), num_res_units=1, norm="instance").eval()


def test_cpu_flags_and_model_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    flags = cpu_flags(info)
    assert {"avx2", "avx512_bf16"} <= flags
    assert bf16_units(flags) == ["avx512_bf16"]
    assert bf16_units(flags | {"amx_bf16"}) == ["amx_bf16", "avx512_bf16"]
    assert bf16_units(frozenset({"avx2", "fma"})) == []
    assert cpu_model(info) == "AMD EPYC 9R14 (family 25, model 17)"
    assert cpu_flags(tmp_path / "absent") == frozenset()  # not Linux: no flags, so fp32


def test_auto_rule() -> None:
    amx, bf16, avx2 = frozenset({"amx_bf16", "amx_tile"}), frozenset({"avx512_bf16"}), frozenset({"avx2"})
    assert resolve_precision("auto", "cpu", amx) == Precision("auto", "bf16", "cpu", "CPU has amx_bf16")
    assert resolve_precision("auto", "cpu", bf16).dtype == "bf16"
    assert resolve_precision("auto", "cpu", avx2).dtype == "fp32"
    assert resolve_precision("auto", "cuda", avx2).dtype == "fp16"  # the bundles' AMP
    assert resolve_precision("auto", torch.device("cuda", 0), avx2).device == "cuda"
    assert resolve_precision("fp32", "cpu", amx).dtype == "fp32"
    # training: AVX-512-BF16 alone gives no faster steps, AMX does
    assert resolve_precision("auto", "cpu", bf16, training=True).dtype == "fp32"
    assert resolve_precision("auto", "cpu", amx, training=True).dtype == "bf16"
    assert resolve_precision("bf16", "cpu", bf16, training=True).dtype == "bf16"
    assert resolve_precision("bf16", "cpu", avx2) == Precision("bf16", "bf16", "cpu", "asked for; no bf16 units")
    assert resolve_precision("BF16", "cuda", avx2).dtype == "bf16"
    assert resolve_precision("fp32", "cpu").as_dict() == {
        "requested": "fp32",
        "dtype": "fp32",
        "device": "cpu",
        "reason": "asked for",
    }


def test_precision_from_the_environment_and_refused_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    assert resolve_precision(None, "cpu", frozenset({"amx_bf16"})).dtype == "fp32"
    assert resolve_precision("bf16", "cpu", frozenset({"amx_bf16"})).dtype == "bf16"  # an argument wins
    monkeypatch.setenv(PRECISION_ENV, "")
    assert resolve_precision(None, "cpu", frozenset({"amx_bf16"})).requested == "auto"
    with pytest.raises(ConfigError, match="precision 'fp8' is not one of auto, fp32, bf16") as caught:
        resolve_precision("fp8")
    assert caught.value.with_flag("--precision").startswith("--precision 'fp8'")


def test_autocast_returns_fp32_close_to_fp32() -> None:
    net = _small_unet()
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.inference_mode():
        reference = net(x)
        out = Autocast(ChannelsLast(net))(x)  # as medseg segment runs it on CPU
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert not torch.equal(out, reference)  # it did run in bf16
    assert torch.allclose(out, reference, atol=0.1, rtol=0.05)
    agree = (out.argmax(1) == reference.argmax(1)).float().mean().item()
    assert agree > 0.97
    assert with_precision(net, resolve_precision("fp32")) is net
    assert isinstance(with_precision(net, resolve_precision("bf16", "cpu", frozenset({"amx_bf16"}))), Autocast)
    with pytest.raises(ValueError, match="fp16"):
        Autocast(net, "fp8")


def test_autocast_training_step_keeps_fp32_master_weights() -> None:
    net = _small_unet().train()
    wrapped = Autocast(net, "bf16")
    wrapped.eval()
    assert not net.training
    wrapped.train()
    assert net.training
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    x, y = torch.randn(2, 1, 32, 32, 32), torch.randint(0, 3, (2, 32, 32, 32))
    logits = wrapped(x)
    assert logits.dtype == torch.float32
    torch.nn.functional.cross_entropy(logits, y).backward()
    optimizer.step()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    # the checkpoint of the wrapped network is the network's own
    assert set(wrapped.state_dict()) == {f"network.{k}" for k in net.state_dict()}


def test_overrides_wrap_references_expressions_and_components() -> None:
    config = {
        "amp": "$torch.cuda.is_available()",
        "train": {"trainer": {"network": "@network"}},
        "validate": {"evaluator": {"network": "$medseg.networks.PadBatch(@train#ema.averaged)"}},
        "other": {"network": {"_target_": "UNet"}},
    }
    keys = ("train#trainer#network", "validate#evaluator#network", "other#network", "absent#network")
    bf16 = resolve_precision("bf16", "cpu", frozenset({"avx512_bf16"}))
    assert precision_overrides(config, bf16, keys) == {
        "amp": False,
        "train#trainer#network": "$medseg.networks.Autocast(@network, 'bf16')",
        "validate#evaluator#network": "$medseg.networks.Autocast(medseg.networks.PadBatch(@train#ema.averaged), 'bf16')",
        "other#network": {"_target_": "medseg.networks.Autocast", "network": {"_target_": "UNet"}, "dtype": "bf16"},
    }
    assert precision_overrides(config, resolve_precision("fp32"), keys) == {"amp": False}
    assert precision_overrides(config, resolve_precision("auto", "cuda"), keys) == {}  # the bundle's AMP


def _subset(name: str) -> int:
    return ENSEMBLE_SUBSET if is_ensemble(open_bundle(REPO / "bundles" / name)) else SUBSET


def _subset_override(name: str) -> dict[str, str]:
    """The first fold-0 cases only: the bundle's own ``val_datalist`` expression, sliced."""
    config = _merged_config(open_bundle(REPO / "bundles" / name), ["train.json", "evaluate.json"])
    expression = config["val_datalist"]
    assert isinstance(expression, str) and expression.startswith("$")
    return {"val_datalist": f"$({expression[1:]})[:{_subset(name)}]"}


@needs_bf16
@pytest.mark.needs_data
@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLES)
def test_bf16_fold0_dice_matches_fp32(name: str, tmp_path: Path) -> None:
    bundle = open_bundle(REPO / "bundles" / name)
    results = {
        p: evaluate_bundle(bundle, fold=0, output=tmp_path / f"{p}.json", precision=p, **_subset_override(name))
        for p in ("fp32", "bf16")
    }
    assert results["bf16"]["precision"]["dtype"] == "bf16" and results["fp32"]["precision"]["dtype"] == "fp32"
    assert results["bf16"]["cases"] == results["fp32"]["cases"] == _subset(name)
    fp32, bf16 = results["fp32"]["metrics"], results["bf16"]["metrics"]
    dice_keys = [key for key in fp32 if key.startswith("val_") and "dice" in key]
    assert "val_mean_dice" in dice_keys
    for key in dice_keys:
        assert abs(bf16[key] - fp32[key]) <= DICE_TOLERANCE, (key, bf16[key], fp32[key])


@needs_bf16
@pytest.mark.needs_data
@pytest.mark.slow
def test_bf16_and_fp32_label_maps_agree_on_the_chest_ct(shared_data: Path) -> None:
    from medseg.segment.pipeline import Segmenter

    maps = {}
    for p in ("fp32", "bf16"):
        segmenter = Segmenter(
            REPO / "bundles" / "left_atrium_unet3d", precision=p, overlap=CT_OVERLAP, parallel_outputs=False
        )
        assert segmenter.settings()["precision"]["dtype"] == p
        maps[p] = segmenter.predict_input(shared_data / "dicom" / "ct-chest", force=True).labelmap
    assert maps["fp32"].shape == (512, 512, 139)
    a, b = maps["fp32"] > 0, maps["bf16"] > 0
    assert a.sum() > 1000  # something was segmented, so agreement means something
    dice = 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
    assert dice >= 0.99
