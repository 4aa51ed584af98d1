"""Every YAML experiment under configs/ resolves to a valid run config (keys known, attention pairing and
options valid) without reading any data, and the ViT ImageNet experiment is ViT-S/16 (197 tokens)."""
from pathlib import Path

import pytest

from training.config import build_parser, resolve_config

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
FILES = sorted(CONFIGS_DIR.glob("*.yaml"))


def test_there_are_configs():
    assert {p.name for p in FILES} >= {"quickstart.yaml", "vit-imagenet100.yaml"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_config_resolves(path):
    cfg = resolve_config(build_parser().parse_args(["--config", str(path)]))
    assert cfg["model"] and cfg["attention"]


def test_imagenet_config_is_the_vit_imagenet_size():
    cfg = resolve_config(build_parser().parse_args(["--config", str(CONFIGS_DIR / "vit-imagenet100.yaml")]))
    vit_s16 = dict(image_size=224, patch_size=16, dim=384, depth=12, heads=6, mlp_ratio=4.0)  # Touvron et al. 2021
    assert {k: cfg[k] for k in vit_s16} == vit_s16
    assert (cfg["image_size"] // cfg["patch_size"]) ** 2 + 1 == 197
