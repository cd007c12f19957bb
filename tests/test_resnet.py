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
