"""Bundled folders (configs/, app/) from a checkout and from an installed wheel's layout; configs by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from eomt_ood import resources
from eomt_ood.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_checkout_finds_the_top_level_folders():
    assert resources.configs_dir() == REPO / "configs"
    assert resources.app_dir() == REPO / "app"
    assert (resources.app_dir() / "explorer.py").is_file()
    assert resources.list_configs() == sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    assert "eomt_large_cityscapes_1024" in resources.list_configs()


def test_config_by_name_or_path(tmp_path, monkeypatch):
    expected = REPO / "configs" / "eomt_large_cityscapes_1024.yaml"
    assert resources.find_config("eomt_large_cityscapes_1024") == expected
    assert resources.find_config("eomt_large_cityscapes_1024.yaml") == expected
    assert resources.find_config(expected) == expected
    own = tmp_path / "eomt_large_cityscapes_1024.yaml"
    own.write_text("model: {}\n")
    monkeypatch.chdir(tmp_path)  # a file of the same name in the working folder wins over the bundled one
    assert resources.find_config("eomt_large_cityscapes_1024.yaml") == Path("eomt_large_cityscapes_1024.yaml")


def test_unknown_name_lists_the_available_ones_and_a_missing_path_is_named(tmp_path):
    with pytest.raises(
        UserError, match=r"--config eomt_huge: no such file .*available: .*eomt_test_synthetic"
    ):
        resources.find_config("eomt_huge")
    with pytest.raises(UserError, match=r"--config .*nope/recipe\.yaml: config file not found"):
        resources.find_config(tmp_path / "nope" / "recipe.yaml")


def _fake_install(root: Path, with_bundle: bool) -> Path:
    """site-packages/eomt_ood (optionally with _bundled/), and an unrelated top-level app/ and configs/."""
    package = root / "site-packages" / "eomt_ood"
    package.mkdir(parents=True)
    for name in ("app", "configs"):
        (root / "site-packages" / name).mkdir()  # another distribution's folders, not ours
    if with_bundle:
        (package / "_bundled" / "configs").mkdir(parents=True)
        (package / "_bundled" / "configs" / "tiny.yaml").write_text("model: {}\n")
        (package / "_bundled" / "app").mkdir()
    return package


def test_installed_layout_uses_the_bundle_and_never_a_stranger_folder(tmp_path, monkeypatch):
    package = _fake_install(tmp_path / "wheel", with_bundle=True)
    monkeypatch.setattr(resources, "_PACKAGE", package)
    monkeypatch.setattr(resources, "_CHECKOUT", package.parent)
    assert resources.configs_dir() == package / "_bundled" / "configs"
    assert resources.app_dir() == package / "_bundled" / "app"
    assert resources.find_config("tiny") == package / "_bundled" / "configs" / "tiny.yaml"

    broken = _fake_install(tmp_path / "broken", with_bundle=False)
    monkeypatch.setattr(resources, "_PACKAGE", broken)
    monkeypatch.setattr(resources, "_CHECKOUT", broken.parent)
    with pytest.raises(UserError, match=r"configs/: not found in this installation"):
        resources.configs_dir()


def test_cli_train_takes_a_config_name(tmp_path):
    from typer.testing import CliRunner

    from eomt_ood.cli import app

    result = CliRunner().invoke(app, ["train", "--config", "no_such_recipe", "--out", str(tmp_path)])
    assert isinstance(result.exception, UserError)
    assert "available:" in str(result.exception) and "eomt_test_synthetic" in str(result.exception)
