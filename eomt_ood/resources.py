"""The folders shipped beside the package: the training recipes (`configs/`) and the explorer (`app/`).

In the repository they live at the top level (`configs/`, `app/`); the wheel carries copies inside the package
(`eomt_ood/_bundled/configs`, `eomt_ood/_bundled/app`, see `force-include` in pyproject.toml). The functions
here find them in either place, so `eomt-ood train --config <name>` and `eomt-ood app` work the same from a
checkout and from `pip install eomt-ood`.
"""

from __future__ import annotations

from pathlib import Path

from eomt_ood.errors import UserError

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent  # the repository root when running from a checkout (or an editable install)
CONFIG_SUFFIX = ".yaml"


def bundled_dir(name: str) -> Path:
    """The bundled folder `name` ("configs" or "app"): inside the installed package, else the checkout's.

    The checkout's top level only counts when it holds this project's pyproject.toml, so an unrelated `app/`
    next to an installed package in site-packages is never picked up.
    """
    inside = _PACKAGE / "_bundled" / name
    if inside.is_dir():
        return inside
    beside = _CHECKOUT / name
    if beside.is_dir() and _is_this_checkout(_CHECKOUT):
        return beside
    raise UserError(
        f"{name}/: not found in this installation (looked in {inside} and {beside}); reinstall eomt-ood"
    )


def _is_this_checkout(root: Path) -> bool:
    try:
        return 'name = "eomt-ood"' in (root / "pyproject.toml").read_text()
    except OSError:
        return False


def configs_dir() -> Path:
    """Folder of the bundled training recipes (complete YAML files, one per name)."""
    return bundled_dir("configs")


def app_dir() -> Path:
    """Folder of the Streamlit explorer (`explorer.py`)."""
    return bundled_dir("app")


def list_configs() -> list[str]:
    """Names of the bundled recipes, e.g. eomt_large_cityscapes_1024 (the file names without .yaml)."""
    return sorted(p.name.removesuffix(CONFIG_SUFFIX) for p in configs_dir().glob(f"*{CONFIG_SUFFIX}"))


def find_config(name_or_path: str | Path, option: str = "--config") -> Path:
    """A recipe by name (`eomt_large_cityscapes_1024`, with or without .yaml) or by path to a YAML file.

    An existing file wins over a bundled name. Anything else is a UserError naming `option`: a missing path
    (when the argument looks like one) or an unknown name, with the available names listed.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    if path.parent != Path(".") or text.endswith(("/", "\\")):  # a path, not a name: do not guess
        raise UserError(f"{option} {text}: config file not found")
    bundled = configs_dir() / (path.name if path.suffix == CONFIG_SUFFIX else path.name + CONFIG_SUFFIX)
    if bundled.is_file():
        return bundled
    raise UserError(
        f"{option} {text}: no such file and no bundled config of that name; available: "
        f"{', '.join(list_configs())}"
    )
