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
    with pytest.raises(UserError, match=r"config:inner: unknown key\(s\) lrr; valid keys are lr, steps"):
        load_config(Outer, None, ["inner.lrr=1"])


def test_wrong_type_is_a_user_error():
    with pytest.raises(UserError, match="inner:steps: expected an integer"):
        load_config(Outer, None, ["inner.steps=abc"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        parse_overrides(["oops"])


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
