"""Configuration: YAML -> frozen dataclasses, with `--set a.b=value` overrides.

Defaults live only in the dataclasses of the package (each module that needs a config declares its own frozen
dataclass and registers nothing). `load_config(cls, path, overrides)` builds an instance of `cls` from a YAML
file plus overrides; an unknown key is a `UserError` that lists the valid ones, and values are converted to the
annotated field types. `to_dict` turns a config back into plain data for writing next to checkpoints and results.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from eomt_ood.errors import UserError, first_line

T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """A plain (YAML/JSON-serialisable) dict of a config dataclass, nested dataclasses included."""
    out = dataclasses.asdict(config)
    return _plain(out)


def changed_setting(
    recorded: Mapping[str, Any], current: Mapping[str, Any], keys: Iterable[str] | None = None
) -> str | None:
    """The first of `keys` (default: every key of `current`) whose recorded value differs from the current one,
    or None; a key missing from `recorded` reads as None. What a command that resumes into a folder checks before
    it keeps that folder's finished files."""
    for key in current if keys is None else keys:
        if recorded.get(key) != current.get(key):
            return key
    return None


def describe_change(key: str, recorded: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """'key = recorded, not current', for the message refusing a resume (`changed_setting`'s key); weights
    changed in place (the `checkpoint_fingerprint` of `eomt_ood.bravo.rundir.maps_identity`) are said in words."""
    if key == "checkpoint_fingerprint":
        return f"other weights in {current.get('checkpoint')} (the file changed since)"
    return f"{key} = {recorded.get(key)!r}, not {current.get(key)!r}"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Turn `["a.b=1", "c=[1, 2]"]` into a nested dict; values are parsed as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.max_steps=100")
        key, raw = item.split("=", 1)
        if not all(part.strip() for part in key.split(".")):
            raise UserError(
                f"--set {item!r}: the key has an empty part; expected KEY=VALUE, e.g. trainer.max_steps=100"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise UserError(f"--set {item!r}: value is not valid YAML ({exc.__class__.__name__})") from None
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: {part!r} is set both as a value and as a section")
        node[parts[-1]] = value
    return nested


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; values of `extra` win."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a YAML config (not UTF-8 text)") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build the frozen dataclass `cls` from an optional YAML file and `KEY=VALUE` overrides; an error in a value
    an override set names that `--set KEY`, one in the file names the file and the key."""
    data = read_yaml(path) if path is not None else {}
    extra = parse_overrides(overrides)
    data = merge(data, extra)
    source = str(path) if path is not None else "config"
    return from_dict(cls, data, where=source, overridden=frozenset(_dotted_keys(extra)))


def _dotted_keys(nested: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """The dotted keys of the values in `nested` ("optim.lr"; a mapping value gives its own keys)."""
    for key, value in nested.items():
        if isinstance(value, dict) and value:
            yield from _dotted_keys(value, prefix + key + ".")
        else:
            yield prefix + key


def at_least(minimum: int, default: Any) -> Any:
    """A dataclass field whose number (when not None) must be at least `minimum`; `from_dict` checks it."""
    return dataclasses.field(default=default, metadata={"min": minimum})


def must(default: Any, test: Callable[[Any], bool], wanted: str) -> Any:
    """A dataclass field whose value (when not None) must pass `test`; `from_dict` checks it and otherwise says
    it "must be `wanted`" (e.g. `must(1e-4, lambda x: x > 0, "positive")`)."""
    return dataclasses.field(default=default, metadata={"test": (test, wanted)})


def from_dict(
    cls: type[T],
    data: dict[str, Any],
    where: str = "config",
    overridden: frozenset[str] = frozenset(),
    prefix: str = "",
) -> T:
    """Instantiate dataclass `cls` from nested plain data, converting and checking every field (types, the
    lower bounds of fields declared with `at_least`, the tests of fields declared with `must`).

    overridden: dotted keys ("optim.lr") set by `--set`, whose errors name `--set KEY` rather than `where`
    (the file); prefix: the dotted key of `cls` within the top level ("optim.")."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)

    def set_by_override(name: str) -> bool:
        """The value of `name` came from `--set`: a value, or (for a mapping that is not a section) any of it."""
        dotted = prefix + name
        if dotted in overridden:
            return True
        section = name in hints and dataclasses.is_dataclass(hints[name])
        return not section and any(key.startswith(dotted + ".") for key in overridden)

    def where_of(name: str) -> str:
        return f"--set {prefix}{name}" if set_by_override(name) else f"{where}:{name}"

    unknown = sorted(set(data) - set(fields))
    if unknown:
        given = where_of(unknown[0]) if set_by_override(unknown[0]) else where
        raise UserError(f"{given}: unknown key(s) {', '.join(unknown)}; valid keys are {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        at = where_of(name)
        kwargs[name] = _convert(hints[name], value, at, overridden, f"{prefix}{name}.")
        minimum = fields[name].metadata.get("min")
        if minimum is not None and isinstance(kwargs[name], int | float) and kwargs[name] < minimum:
            raise UserError(f"{at}: must be at least {minimum}, got {kwargs[name]!r}")
        test = fields[name].metadata.get("test")
        if test is not None and kwargs[name] is not None and not test[0](kwargs[name]):
            raise UserError(f"{at}: must be {test[1]}, got {kwargs[name]!r}")
    return cls(**kwargs)


def _convert(
    tp: Any, value: Any, where: str, overridden: frozenset[str] = frozenset(), prefix: str = ""
) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, overridden, prefix)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise UserError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise UserError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(a, v, where) for a, v in zip(args, value, strict=True))
        inner = args[0] if args else Any
        items = [_convert(inner, v, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{where}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise UserError(f"{where}: expected a path, got {value!r}")
    return value
