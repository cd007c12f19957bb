"""--arch resnet12 end to end through the public CLI: trained, exported (the exporter verifies the runtime's
SGD steps against torch before writing), described, adapted and used for predictions; and its refusals."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from typer.testing import CliRunner  # noqa: E402

from fastadapt.bundle import read_bundle  # noqa: E402
from fastadapt.cli import app  # noqa: E402
from fastadapt.meta_train import verification  # noqa: E402
from fastadapt.models import ModelSpec, build_model  # noqa: E402
from fastadapt.models.networks import ResNet12  # noqa: E402
from sample_data import write_glyph_folders  # noqa: E402
from test_cli_runtime import run_cli  # noqa: E402
from test_outputs import one_error  # noqa: E402

WIDTH, SIZE = 4, 32  # 32x32: the last block normalises 4x4 maps (test_batched says why not 16x16)


def test_widths_features_and_parameter_count():
    w = 3
    model = build_model(ModelSpec(name="resnet12", channels=3, image_size=40, width=w))
    assert isinstance(model, ResNet12) and model.feature_dim == 5 * w
    widths, expected, channels = (w, 2 * w, 4 * w, 5 * w), 0, 3
    for width in widths:  # 3 bias-free 3x3 convs and a 1x1 shortcut, each followed by a norm's scale and shift
        expected += 9 * channels * width + 2 * 9 * width * width + channels * width + 4 * 2 * width
        channels = width
    assert sum(p.numel() for p in model.parameters()) == expected
    features = model(torch.zeros(2, 3, 40, 40))
    assert features.shape == (2, 5 * w)
    with pytest.raises(ValueError, match="too small"):
        build_model(ModelSpec(name="resnet12", image_size=15, width=w))


@pytest.mark.parametrize("name", ["conv4", "resnet12"])
@pytest.mark.parametrize("norm", ["instance", "layer"])
def test_norm_layers_normalise_over_what_their_name_says(name, norm):
    """--norm instance: each channel of each image normalised on its own; --norm layer: each image over all its
    channels together. Guards --norm instance building a layer norm (torch, ONNX and the runtime would all
    agree, so only the documented architecture would be wrong)."""
    model = build_model(ModelSpec(name=name, image_size=32, width=4, norm=norm)).double()
    # the norms: the layers with a per-channel scale (convolutions' weights are 4-d); fresh: scale 1, shift 0
    norms = [m for m in model.modules() if not list(m.children()) and getattr(m, "weight", None) is not None
             and m.weight.dim() == 1]
    assert norms
    g = torch.Generator().manual_seed(0)
    for layer in norms:
        c = layer.weight.numel()
        # channels with other offsets and spreads, so normalising per channel and over all of them differ
        x = (torch.randn(2, c, 5, 5, generator=g, dtype=torch.float64) * torch.arange(1, c + 1).view(1, c, 1, 1)
             + 3 * torch.arange(c).view(1, c, 1, 1))
        dims = (2, 3) if norm == "instance" else (1, 2, 3)
        mean, var = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
        want = (x - mean) / torch.sqrt(var + layer.eps)
        with torch.no_grad():
            assert torch.allclose(layer(x), want, rtol=0, atol=1e-12), (name, norm, layer)


def _instance_norm(h, weight, bias):
    """Each channel of each image over its H x W, then the channel's scale and shift (GroupNorm's eps 1e-5)."""
    mean, var = h.mean((2, 3), keepdim=True), h.var((2, 3), unbiased=False, keepdim=True)
    return (h - mean) / torch.sqrt(var + 1e-5) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def _max_pool(h):
    """2x2 windows, stride 2 (an odd last row / column is dropped)."""
    n, c, height, width = h.shape
    h = h[:, :, :height // 2 * 2, :width // 2 * 2]
    return h.reshape(n, c, height // 2, 2, width // 2, 2).amax((3, 5))


@pytest.mark.parametrize("name", ["conv4", "resnet12"])
def test_networks_compute_their_documented_layers(name):
    """The bodies against the architecture written out layer by layer (float64; random norm scales and shifts, so
    a norm's affine part counts). Guards: ResNet-12's shortcut left out of the sum, its features as another
    reduction than the spatial mean, Conv4's ReLU before the norm, a wrong padding or pooling. torch, ONNX and
    the runtime would agree on any of these (the parity tests pass), only the documented model would be wrong.
    Tolerance: the same float64 operations summed in other orders, ~1e-15 relative; 1e-10 is far above that and
    far below any structural change (order-1 differences)."""
    F = torch.nn.functional
    model = build_model(ModelSpec(name=name, channels=2, image_size=38, width=3)).double()  # 38: pools odd 19, 9
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    w = dict(model.named_parameters())
    x = torch.randn(3, 2, 38, 38, generator=g, dtype=torch.float64)
    h = x
    if name == "conv4":
        for i in range(4):  # conv3x3 (padding 1) -> norm -> ReLU -> 2x2 max pool, then flatten
            h = F.conv2d(h, w[f"layers.{4 * i}.weight"], w[f"layers.{4 * i}.bias"], padding=1)
            h = _max_pool(torch.relu(_instance_norm(h, w[f"layers.{4 * i + 1}.weight"], w[f"layers.{4 * i + 1}.bias"])))
        want = h.flatten(1)
    else:
        for b in range(4):  # 3 x (conv3x3, norm) with ReLU between, + (conv1x1, norm) shortcut, ReLU, pool
            p = lambda k: w[f"blocks.{b}.{k}"]  # noqa: E731
            r = h
            for j in range(3):
                r = F.conv2d(r, p(f"convs.{3 * j}.weight"), padding=1)
                r = _instance_norm(r, p(f"convs.{3 * j + 1}.weight"), p(f"convs.{3 * j + 1}.bias"))
                r = torch.relu(r) if j < 2 else r
            s = _instance_norm(F.conv2d(h, p("shortcut.0.weight")), p("shortcut.1.weight"), p("shortcut.1.bias"))
            h = _max_pool(torch.relu(r + s))
        want = h.mean((2, 3))  # the spatial mean of the last block's maps
    with torch.no_grad():
        got = model(x)
    assert got.shape == want.shape == (3, model.feature_dim)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.fixture(scope="module")
def resnet_bundle(tmp_path_factory):
    """A tiny resnet12 trained for 2 iterations and exported with the CLI (the export is the slow part)."""
    root = tmp_path_factory.mktemp("resnet")
    runner = CliRunner()
    # 3 channels: the export of a colour model (its runtime adaptation may add a colour head; verification turns it off)
    common = ["--data", "synthetic", "--arch", "resnet12", "--width", str(WIDTH), "--image-size", str(SIZE),
              "--channels", "3", "--no-invert"]
    result = runner.invoke(app, ["train", *common, "--algorithm", "fomaml", "--head-init", "prototype", "--ways", "3",
                                 "--shots", "1", "--query", "2", "--meta-batch", "2", "--iterations", "2",
                                 "--val-every", "2", "--val-tasks", "3", "--quiet", "--out", str(root / "run")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", str(root / "run"), "--out", str(root / "rn.fadapt")])
    assert result.exit_code == 0, result.output
    return root


def test_export_writes_a_verified_resnet12_bundle(resnet_bundle, capsys):
    bundle = read_bundle(str(resnet_bundle / "rn.fadapt"))
    arch = bundle.manifest["architecture"]
    assert arch["name"] == "resnet12" and arch["width"] == WIDTH and arch["feature_dim"] == 5 * WIDTH
    code, stdout, _ = run_cli(capsys, "info", resnet_bundle / "rn.fadapt")
    assert code == 0 and "name=resnet12" in stdout


@pytest.mark.parametrize("ways, shots", [(7, 1), (2, 4)])
def test_runtime_steps_match_torch_for_other_task_shapes(resnet_bundle, ways, shots):
    """The export verified a 5-way 2-shot task; the graphs are dynamic in images and classes."""
    bundle = read_bundle(str(resnet_bundle / "rn.fadapt"))
    arch = {k: v for k, v in bundle.manifest["architecture"].items() if k != "feature_dim"}
    model = build_model(ModelSpec.from_dict(arch))
    task = verification.sample_task((3, SIZE, SIZE), ways=ways, shots=shots, seed=ways)
    verification.verify(bundle, model, steps=3, task=task)  # raises unless every step agrees


def test_adapt_and_predict_through_the_cli(resnet_bundle, tmp_path, capsys):
    shots = write_glyph_folders(tmp_path / "shots", 3, 2, seed=1)
    code, _, err = run_cli(capsys, "adapt", "--shots", shots, "--model", resnet_bundle / "rn.fadapt",
                           "--out", tmp_path / "mine.fadapt")
    assert code == 0, err
    code, stdout, err = run_cli(capsys, "predict", "--model", tmp_path / "mine.fadapt", shots / "class01", "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert len(rows) == 2 and all(0 < row["probability"] <= 1 for row in rows)


def test_unknown_arch_is_one_line_naming_the_flag(tmp_path, capsys):
    code, stdout, err = run_cli(capsys, "train", "--arch", "vgg16", "--iterations", "1", "--out", tmp_path / "r")
    one_error(code, stdout, err, "--arch", "vgg16")
    assert not (tmp_path / "r").exists()
    code, stdout, err = run_cli(capsys, "train", "--data", "sinusoid", "--arch", "resnet12", "--iterations", "1",
                                "--out", tmp_path / "s")
    one_error(code, stdout, err, "--arch", "sinusoid")


def test_init_from_another_architecture_names_arch(resnet_bundle, tmp_path, capsys):
    code, stdout, err = run_cli(capsys, "train", "--data", "synthetic", "--width", str(WIDTH), "--image-size",
                                str(SIZE), "--iterations", "1", "--meta-batch", "1", "--quiet",
                                "--init-from", resnet_bundle / "run", "--out", tmp_path / "r")
    one_error(code, stdout, err, "--init-from", "--arch")
