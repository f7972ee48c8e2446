"""Backbones: tiny_cnn, timm models built offline, local weights files, data configs, errors."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from monet.errors import ConfigError
from monet.models.backbones import backbone_data_config, create_backbone, load_weights
from monet.models.encoders import create_encoder, encoder_data_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_download(monkeypatch):
    """Any attempt by timm to fetch pretrained weights fails the test."""
    import timm.models._builder as builder

    def boom(*a, **k):
        raise AssertionError("a download was attempted")
    monkeypatch.setattr(builder, "load_pretrained", boom)
    monkeypatch.setattr(builder, "load_custom_pretrained", boom, raising=False)


# ------------------------------------------------------------------------------------ tiny_cnn
def test_importing_encoders_registers_tiny_cnn():
    code = ("from monet.models.encoders import create_encoder; "
            "from monet.registry import ENCODERS; "
            "assert {'mlp', 'tiny_cnn'} <= set(ENCODERS.names()), ENCODERS.names(); "
            "import sys; assert 'timm' not in sys.modules, 'timm imported eagerly'")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr


def test_tiny_cnn_shape_width_and_gradient():
    torch.manual_seed(0)
    enc, dim = create_encoder("tiny_cnn", (3, 32, 32), layers=7, width=48)  # layers ignored
    assert dim == 48
    x = torch.randn(4, 3, 32, 32)
    f = enc(x)
    assert f.shape == (4, 48)
    f.pow(2).sum().backward()
    first = enc.features[0].weight
    assert first.grad is not None and first.grad.abs().sum() > 0
    # any image size and channel count: global average pooling
    enc1, _ = create_encoder("tiny_cnn", (1, 17, 23))
    assert enc1(torch.zeros(2, 1, 17, 23)).shape == (2, 64)


def test_tiny_cnn_needs_image_input():
    with pytest.raises(ConfigError, match="image input"):
        create_encoder("tiny_cnn", (10,))


# ------------------------------------------------------------------------------------ timm
def test_timm_backbone_offline_out_dim_and_forward():
    torch.manual_seed(0)
    enc, dim = create_encoder("resnet18", (3, 64, 64), pretrained=None, layers=4, width=64)
    assert dim == 512                      # resnet18's last stage has 512 channels
    f = enc(torch.randn(2, 3, 64, 64))
    assert f.shape == (2, 512)
    assert enc.training                    # the probe forward left the mode alone
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    # in_chans follows the input shape
    enc1, dim1 = create_backbone("resnet18", (1, 32, 32))
    assert dim1 == 512 and enc1(torch.zeros(2, 1, 32, 32)).shape == (2, 512)


@pytest.mark.parametrize("name,shape", [("tiny_cnn", (3, 16, 16)), ("resnet18", (3, 32, 32))])
def test_state_dict_file_reproduces_weights(tmp_path, name, shape):
    torch.manual_seed(0)
    src, _ = create_encoder(name, shape)
    f = tmp_path / f"{name}.pth"
    torch.save(src.state_dict(), f)
    torch.manual_seed(123)
    dst, _ = create_encoder(name, shape, pretrained=str(f))
    sd, dd = src.state_dict(), dst.state_dict()
    assert sd.keys() == dd.keys()
    assert all(torch.equal(sd[k], dd[k]) for k in sd)
    x = torch.randn(2, *shape)
    src.eval()
    dst.eval()
    assert torch.allclose(src(x), dst(x))


def test_timm_checkpoint_dict_with_classifier_reports_extra_keys(tmp_path, caplog):
    torch.manual_seed(0)
    src, _ = create_backbone("resnet18", (3, 32, 32))
    state = {"module." + k: v for k, v in src.state_dict().items()}   # DDP prefix
    state["module.fc.weight"] = torch.zeros(10, 512)                   # ImageNet classifier
    state["module.fc.bias"] = torch.zeros(10)
    del state["module.layer4.1.bn2.bias"]                               # one tensor missing
    f = tmp_path / "ckpt.pth"
    torch.save({"state_dict": state, "epoch": 3}, f)
    torch.manual_seed(5)
    dst, _ = create_backbone("resnet18", (3, 32, 32))
    before = dst.state_dict()["layer4.1.bn2.bias"].clone()
    with caplog.at_level(logging.WARNING, logger="monet.models.backbones"):
        rep = load_weights(dst, str(f), name="resnet18")
    assert sorted(rep["unexpected"]) == ["fc.bias", "fc.weight"]
    assert rep["missing"] == ["layer4.1.bn2.bias"]
    assert rep["loaded"] == len(src.state_dict()) - 1
    assert torch.equal(dst.state_dict()["conv1.weight"], src.state_dict()["conv1.weight"])
    assert torch.equal(dst.state_dict()["layer4.1.bn2.bias"], before)
    text = caplog.text
    assert "fc.weight" in text and "layer4.1.bn2.bias" in text


def test_weights_file_that_does_not_fit(tmp_path):
    f = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(3)}, f)
    with pytest.raises(ConfigError, match="shares no parameter name"):
        create_encoder("tiny_cnn", (3, 16, 16), pretrained=str(f))
    g = tmp_path / "wrong_shape.pth"
    torch.save({"features.0.weight": torch.zeros(16, 3, 5, 5)}, g)
    with pytest.raises(ConfigError, match="shape mismatch"):
        create_encoder("tiny_cnn", (3, 16, 16), pretrained=str(g))


def test_unknown_name_and_missing_file_and_non_image():
    with pytest.raises(ConfigError, match=r"unknown backbone 'resnet_nope'.*list_models"):
        create_encoder("resnet_nope", (3, 32, 32))
    missing = "/nonexistent/dir/weights_xyz.pth"
    with pytest.raises(ConfigError, match="weights_xyz.pth") as e:
        create_encoder("resnet18", (3, 32, 32), pretrained=missing)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="weights_xyz.pth"):
        create_encoder("tiny_cnn", (3, 32, 32), pretrained=missing)
    with pytest.raises(ConfigError, match="image input"):
        create_backbone("resnet18", (2,))


# ------------------------------------------------------------------------------------ data config
def test_backbone_data_config():
    inc = backbone_data_config("inception_v3")
    assert inc["input_size"] == (3, 299, 299)
    assert set(inc) >= {"input_size", "mean", "std", "interpolation"}
    r50 = backbone_data_config("resnet50")
    assert r50["input_size"] == (3, 224, 224)
    assert r50["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert r50["std"] == pytest.approx((0.229, 0.224, 0.225))
    tiny = encoder_data_config("tiny_cnn")
    assert tiny["input_size"] is None
    assert tiny["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert encoder_data_config("inception_v3") == inc
    with pytest.raises(ConfigError, match="unknown backbone.*tiny_cnn"):
        encoder_data_config("not_a_model_at_all")
