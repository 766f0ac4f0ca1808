from dataclasses import dataclass, field
from pathlib import Path

import pytest

from eomt_ood.config import load_config, parse_overrides, to_dict
from eomt_ood.errors import UserError


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-4
    steps: int = 10


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    sizes: tuple[int, int] = (1, 2)
    path: Path | None = None


def test_yaml_and_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("name: y\ninner:\n  lr: 0.5\n")
    cfg = load_config(Outer, cfg_file, ["inner.steps=7", "sizes=[3, 4]", "path=/tmp/a"])
    assert cfg == Outer(name="y", inner=Inner(lr=0.5, steps=7), sizes=(3, 4), path=Path("/tmp/a"))
    assert to_dict(cfg)["inner"] == {"lr": 0.5, "steps": 7}
    assert to_dict(cfg)["path"] == "/tmp/a"


def test_unknown_key_lists_valid_ones(tmp_path):
    with pytest.raises(UserError, match=r"--set inner.lrr: unknown key\(s\) lrr; valid keys are lr, steps"):
        load_config(Outer, None, ["inner.lrr=1"])
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  lrr: 1\n")
    with pytest.raises(UserError, match=r"c.yaml:inner: unknown key\(s\) lrr; valid keys are lr, steps"):
        load_config(Outer, path)


def test_wrong_type_is_a_user_error(tmp_path):
    """An error names where the value came from: `--set KEY` for an override (the file is fine), the file and
    the key for a value in the file."""
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  steps: 3\n")
    with pytest.raises(UserError, match="^--set inner.steps: expected an integer, got 'abc'"):
        load_config(Outer, path, ["inner.steps=abc"])
    with pytest.raises(UserError, match="^--set inner.steps: expected an integer, got ''"):
        load_config(Outer, path, ["inner.steps="])
    path.write_text("inner:\n  steps: abc\n")
    with pytest.raises(UserError, match="c.yaml:inner:steps: expected an integer"):
        load_config(Outer, path, ["inner.lr=0.5"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        parse_overrides(["oops"])
    with pytest.raises(UserError, match="empty part"):
        parse_overrides(["=1"])


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(Outer, tmp_path / "nope.yaml")


def test_changed_setting_names_the_first_key_that_differs():
    from eomt_ood.config import changed_setting

    recorded = {"model": "eomt_large", "confidences": ["msp"], "precision": "bf16"}
    assert changed_setting(recorded, dict(recorded)) is None
    assert (
        changed_setting(recorded, {**recorded, "confidences": ["rba"], "precision": "fp32"}) == "confidences"
    )
    # only the keys asked about count, and a key the record lacks reads as None
    assert changed_setting(recorded, {**recorded, "precision": "fp32"}, ["model", "confidences"]) is None
    assert changed_setting(recorded, {**recorded, "token_merging": "algm"}) == "token_merging"
    assert changed_setting(recorded, {**recorded, "token_merging": None}) is None
