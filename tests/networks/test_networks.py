"""Networks: any-size forward, gradients, TorchScript and ONNX export, registry, parameter counts."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from medseg import networks
from medseg.errors import ConfigError
from medseg.networks import blocks
from medseg.networks.base import crop_padding, pad_to_multiple
from medseg.networks.segnet import MaxUnpool

# Small widths keep every test fast on 2 CPU cores; the structure (depth, strides,
# skips, ASPP, pyramid pooling, unpooling) is that of the defaults.
SMALL: dict[str, dict] = {
    "unet": {"channels": (4, 8, 16, 32), "strides": (2, 2, 2), "num_res_units": 1},
    "resencunet": {"channels": (4, 8, 16, 32), "strides": (2, 2, 2), "blocks_down": (1, 2, 2, 2)},
    "deeplabv3plus": {
        "channels": (8, 8, 16, 16, 32),
        "num_blocks": (1, 1, 1, 1),
        "aspp_channels": 16,
        "low_level_channels": 8,
        "decoder_channels": 16,
    },
    "fcn": {"channels": (4, 8, 16, 16, 32), "convs_per_stage": 1, "fc_channels": 32},
    "segnet": {"channels": (8, 16, 32), "convs_per_stage": 1},
    "pspnet": {"channels": (8, 8, 16, 16, 32), "num_blocks": (1, 1, 1, 1), "decoder_channels": 16},
}
ODD_SIZE = {2: (45, 37), 3: (37, 45, 29)}
IN_CHANNELS, OUT_CHANNELS = 1, 3

# Parameter counts of the defaults (in_channels=1, out_channels=3): a change here is an
# architecture change and must be deliberate.
DEFAULT_PARAMS = {
    ("unet", 2): 1_625_496,
    ("unet", 3): 4_807_482,
    ("resencunet", 2): 21_177_187,
    ("resencunet", 3): 62_780_835,
    ("deeplabv3plus", 2): 1_906_003,
    ("deeplabv3plus", 3): 5_040_883,
    ("fcn", 2): 1_836_985,
    ("fcn", 3): 5_372_473,
    ("segnet", 2): 589_411,
    ("segnet", 3): 1_764_739,
    ("pspnet", 2): 2_262_051,
    ("pspnet", 3): 6_557_283,
}


def small_net(name: str, dims: int) -> nn.Module:
    torch.manual_seed(0)
    return networks.create(
        name, spatial_dims=dims, in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS, **SMALL[name]
    )


CASES = [(name, dims) for name in networks.available() for dims in (2, 3)]
CASE_PARAMS = {case: networks.count_parameters(small_net(*case)) for case in CASES}
CASE_IDS = [f"{name}-{dims}d-{CASE_PARAMS[(name, dims)]}p" for name, dims in CASES]


def first_conv(net: nn.Module) -> nn.Module:
    """The first convolution applied to the image (first registered conv with the input channels)."""
    for module in net.modules():
        if isinstance(module, nn.modules.conv._ConvNd) and module.in_channels == IN_CHANNELS:
            return module
    raise AssertionError("no convolution over the input found")


@pytest.mark.parametrize(("name", "dims"), CASES, ids=CASE_IDS)
def test_output_shape_any_size(name: str, dims: int) -> None:
    net = small_net(name, dims).eval()
    for size in (ODD_SIZE[dims], (32,) * dims, (17,) * dims):
        x = torch.randn(2, IN_CHANNELS, *size)
        with torch.no_grad():
            y = net(x)
        assert y.shape == (2, OUT_CHANNELS, *size)
        assert torch.isfinite(y).all()


@pytest.mark.parametrize(("name", "dims"), CASES, ids=CASE_IDS)
def test_gradients_reach_first_layer(name: str, dims: int) -> None:
    net = small_net(name, dims).train()
    x = torch.randn(2, IN_CHANNELS, *ODD_SIZE[dims])
    target = torch.randint(0, OUT_CHANNELS, (2, *ODD_SIZE[dims]))
    # cross-entropy, not a plain sum: the sum of an instance-normalised map has zero gradient
    nn.functional.cross_entropy(net(x), target).backward()
    grad = first_conv(net).weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize(("name", "dims"), CASES, ids=CASE_IDS)
def test_torchscript_trace_matches_eager(name: str, dims: int) -> None:
    net = small_net(name, dims).eval()
    x = torch.randn(1, IN_CHANNELS, *ODD_SIZE[dims])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(net, x)
    with torch.no_grad():
        for sample in (x, torch.randn_like(x)):  # a second input: the trace is not a constant
            torch.testing.assert_close(traced(sample), net(sample), atol=1e-4, rtol=1e-4)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(buffer)(x), net(x), atol=1e-4, rtol=1e-4)


def _onnx_run(net: nn.Module, x: torch.Tensor, dynamo: bool, dynamic: bool, tmp_path, others=()) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dyn = {0: torch.export.Dim.AUTO, **{d: torch.export.Dim.AUTO for d in range(2, x.dim())}}
            torch.onnx.export(
                net,
                (x,),
                str(path),
                dynamo=True,
                input_names=["image"],
                output_names=["logits"],
                dynamic_shapes=({**dyn},) if dynamic else None,
            )
        else:
            axes = {0: "batch", **{d: f"s{d}" for d in range(2, x.dim())}}
            torch.onnx.export(
                net,
                (x,),
                str(path),
                dynamo=False,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": axes, "logits": axes} if dynamic else None,
                opset_version=17,
            )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for sample in (x, *others):
        with torch.no_grad():
            expected = net(sample).numpy()
        (got,) = session.run(None, {"image": sample.numpy()})
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", networks.available())
def test_onnx_export_3d_matches_eager(name: str, tmp_path) -> None:
    """torch 2.13's default exporter (``dynamo=True``, needs onnxscript), fixed input size."""
    net = small_net(name, 3).eval()
    _onnx_run(net, torch.randn(1, IN_CHANNELS, *ODD_SIZE[3]), dynamo=True, dynamic=False, tmp_path=tmp_path)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("name", ["unet", "deeplabv3plus"])
def test_onnx_export_dynamic_shapes(name: str, dynamo: bool, tmp_path) -> None:
    """Dynamic batch and spatial axes with both exporters; exported at a size that needs no
    padding, run at sizes that do: the pad/crop stays in the graph."""
    net = small_net(name, 3).eval()
    x = torch.randn(1, IN_CHANNELS, 32, 32, 32)
    others = (torch.randn(2, IN_CHANNELS, *ODD_SIZE[3]), torch.randn(1, IN_CHANNELS, 40, 23, 50))
    _onnx_run(net, x, dynamo=dynamo, dynamic=True, tmp_path=tmp_path, others=others)


def test_registry() -> None:
    assert networks.available() == ["deeplabv3plus", "fcn", "pspnet", "resencunet", "segnet", "unet"]
    expected = {
        "unet": networks.UNet,
        "resencunet": networks.ResidualEncoderUNet,
        "deeplabv3plus": networks.DeepLabV3Plus,
        "fcn": networks.FCN,
        "segnet": networks.SegNet,
        "pspnet": networks.PSPNet,
    }
    for name, cls in expected.items():
        net = networks.create(name, spatial_dims=2, in_channels=2, out_channels=4, **SMALL[name])
        assert type(net) is cls
        assert net(torch.randn(1, 2, 24, 20)).shape == (1, 4, 24, 20)
    assert isinstance(networks.create("DeepLabV3-Plus", 2, **SMALL["deeplabv3plus"]), networks.DeepLabV3Plus)
    with pytest.raises(ConfigError, match="unknown network"):
        networks.create("resnet")


def test_bundle_config_target() -> None:
    """Classes are importable by path, as MONAI bundle configs instantiate them."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(
        {
            "network_def": {
                "_target_": "medseg.networks.DeepLabV3Plus",
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": 3,
                **SMALL["deeplabv3plus"],
            }
        }
    )
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, networks.DeepLabV3Plus)
    assert net(torch.randn(1, 1, 21, 19, 17)).shape == (1, 3, 21, 19, 17)


@pytest.mark.parametrize(("name", "dims"), CASES, ids=CASE_IDS)
def test_parameter_count_deterministic(name: str, dims: int) -> None:
    assert networks.count_parameters(small_net(name, dims)) == CASE_PARAMS[(name, dims)]
    net = networks.create(name, spatial_dims=dims, in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS)
    assert networks.count_parameters(net) == DEFAULT_PARAMS[(name, dims)]


def test_deeplab_structure() -> None:
    net = networks.DeepLabV3Plus(3, 1, 3)
    assert net.size_divisor == (8, 8, 8)
    assert net.encoder.reductions == (2, 4, 8, 8, 8)  # stages 3 and 4 atrous at output stride 8
    aspp = net.decoder.aspp
    assert len(aspp.branches) == 5  # 1x1, three atrous rates, image pooling
    assert [b.depthwise.conv.dilation for b in aspp.branches[1:4]] == [(2, 2, 2), (4, 4, 4), (6, 6, 6)]
    pooling = aspp.branches[4]
    assert not any(
        isinstance(m, nn.modules.instancenorm._InstanceNorm | nn.modules.batchnorm._BatchNorm)
        for m in pooling.modules()
    )
    assert net.decoder.reduce.conv.out_channels == 48
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    assert buffer.tell() < 25e6  # the hippocampus bundle's size budget

    os16 = networks.DeepLabV3Plus(2, 1, 2, output_stride=16, atrous_rates=(1, 2, 3), norm="batch")
    assert os16.encoder.reductions == (2, 4, 8, 16, 16)
    assert os16.eval()(torch.randn(1, 1, 50, 41)).shape == (1, 2, 50, 41)
    fine = networks.DeepLabV3Plus(3, 1, 2, low_level_stride=2, **SMALL["deeplabv3plus"])
    assert fine(torch.randn(1, 1, 19, 23, 17)).shape == (1, 2, 19, 23, 17)
    with pytest.raises(ValueError):
        networks.DeepLabV3Plus(3, 1, 2, output_stride=32)


def test_input_dimension_checked() -> None:
    net = small_net("unet", 3)
    with pytest.raises(ValueError, match="5-D input"):
        net(torch.randn(1, 1, 32, 32))


def test_pad_and_crop_roundtrip() -> None:
    x = torch.randn(2, 3, 37, 45, 29)
    padded, pads = pad_to_multiple(x, 8)
    assert padded.shape == (2, 3, 40, 48, 32)
    assert pads == [(1, 2), (1, 2), (1, 2)]
    assert torch.equal(crop_padding(padded, pads), x)
    assert padded[:, :, 0].abs().sum() == 0  # zero padding before
    same, none = pad_to_multiple(x, (1, 5, 1))
    assert same.shape == x.shape and none == [(0, 0)] * 3


@pytest.mark.parametrize("dims", [2, 3])
def test_adaptive_avg_pool_matches_torch(dims: int) -> None:
    torch_pool = nn.functional.adaptive_avg_pool2d if dims == 2 else nn.functional.adaptive_avg_pool3d
    for size in ((5, 7, 4)[:dims], (13, 6, 9)[:dims], (2, 3, 1)[:dims]):
        x = torch.randn(2, 3, *size, dtype=torch.float64)
        for bins in (1, 2, 3, 6):
            torch.testing.assert_close(blocks.adaptive_avg_pool(x, bins), torch_pool(x, bins))


@pytest.mark.parametrize("dims", [2, 3])
def test_max_unpool_trace_path_equals_eager(dims: int) -> None:
    pool = (nn.MaxPool2d if dims == 2 else nn.MaxPool3d)(2, 2, return_indices=True)
    unpool = MaxUnpool(dims)
    x = torch.randn(2, 4, *(8, 6, 4)[:dims])
    pooled, idx = pool(x)
    eager = unpool(pooled, idx)
    assert eager.shape == x.shape
    assert (eager != 0).sum() == pooled.numel()  # each max goes back to exactly one place
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(unpool, (pooled, idx))
    assert torch.equal(traced(pooled, idx), eager)


@pytest.mark.parametrize("dims", [2, 3])
def test_residual_encoder_unet_structure(dims: int) -> None:
    """nnU-Net's ResEnc layout: the blocks in the encoder, one convolution per decoder stage, per-axis
    strides (an anisotropic first level), any input size."""
    from monai.networks.blocks.dynunet_block import UnetResBlock

    strides = ((2, 1), 2, 2) if dims == 2 else ((2, 2, 1), 2, 2)
    net = networks.ResidualEncoderUNet(
        dims, IN_CHANNELS, OUT_CHANNELS, channels=(4, 8, 16, 16), strides=strides, blocks_down=(1, 3, 4, 6)
    )
    assert net.size_divisor == ((8, 4) if dims == 2 else (8, 8, 4))
    blocks = [sum(isinstance(m, UnetResBlock) for m in stage.modules()) for stage in net.encoder.stages]
    assert blocks == [1, 3, 4, 6]
    convs = [
        [m for m in stage.modules() if isinstance(m, nn.modules.conv._ConvNd)] for stage in net.decoder.convs
    ]
    assert [len(c) for c in convs] == [1, 1, 1]
    x = torch.randn(2, IN_CHANNELS, *ODD_SIZE[dims])
    with torch.no_grad():
        assert net.eval()(x).shape == (2, OUT_CHANNELS, *ODD_SIZE[dims])
    with pytest.raises(ValueError, match="blocks_down needs 4 values"):
        networks.ResidualEncoderUNet(
            dims, 1, 2, channels=(4, 8, 16, 16), strides=strides, blocks_down=(1, 3, 4)
        )


def test_fcn_upsampling_initialised_bilinear() -> None:
    net = networks.FCN(2, 1, 2, **SMALL["fcn"])
    up = net.decoder.upscore2
    constant = torch.ones(1, 2, 6, 6)
    out = up(constant)
    assert out.shape == (1, 2, 12, 12)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], torch.ones(1, 2, 10, 10))  # interior: interpolation
    assert net.decoder.score_pool4.weight.abs().sum() == 0  # FCN-8s starts from FCN-32s


def test_segnet_uses_unpooling_indices() -> None:
    """Decoder output depends on where the encoder's maxima were, not only on their values."""
    net = small_net("segnet", 2).eval()
    encoder_out, indices = net.encoder(torch.randn(1, 1, 32, 32))
    shuffled = [torch.flip(i, dims=[-1]) for i in indices]
    with torch.no_grad():
        a = net.decoder((encoder_out, indices))
        b = net.decoder((encoder_out, shuffled))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_weights_same_output_and_state_dict(dims: int) -> None:
    torch.manual_seed(0)
    network = networks.create("unet", spatial_dims=dims, in_channels=1, out_channels=3).eval()
    x = torch.randn(2, 1, *([20] * dims))
    with torch.no_grad():
        expected = network(x)
        converted = networks.to_channels_last(network)
        assert converted is network
        layout = torch.channels_last_3d if dims == 3 else torch.channels_last
        weights = [p for p in network.parameters() if p.ndim == dims + 2]
        assert weights and all(p.is_contiguous(memory_format=layout) for p in weights)
        torch.testing.assert_close(network(x), expected, rtol=1e-4, atol=1e-4)
    # A channels-last state dict loads into a network built as usual, and back.
    plain = networks.create("unet", spatial_dims=dims, in_channels=1, out_channels=3).eval()
    plain.load_state_dict(network.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(x), expected, rtol=1e-4, atol=1e-4)
    assert all(p.is_contiguous() for p in networks.to_channels_last(plain, enabled=False).parameters())


def test_pad_batch_returns_the_real_samples_only() -> None:
    torch.manual_seed(0)
    network = networks.create("unet", spatial_dims=3, in_channels=1, out_channels=3).eval()
    padded = networks.PadBatch(network).eval()
    x = torch.randn(1, 1, 24, 32, 24)
    seen: list[int] = []
    handle = network.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    with torch.no_grad():
        expected = network(x)
        result = padded(x)
    handle.remove()
    assert seen == [1, 2]  # the wrapper ran the network on a batch of two
    assert result.shape == expected.shape
    torch.testing.assert_close(result, expected, rtol=1e-4, atol=1e-4)

    class TwoHeads(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x * 2, x.mean(dim=(1, 2, 3, 4))

    heads = networks.PadBatch(TwoHeads()).eval()
    doubled, mean = heads(x)
    assert doubled.shape == x.shape and mean.shape == (1,)
    # Training mode (gradients, batch statistics) is never padded.
    heads.train()
    assert heads(x)[0].shape == x.shape
