"""YAML <-> dataclass configs: strict loading, did-you-mean hints, dotted overrides.

YAML holds data only. A mapping is turned into a dataclass field by field, recursing into nested
dataclass fields; unknown keys are errors that name the file, the dotted key and the closest valid
key. ``--set a.b=value`` overrides parse ``value`` with ``yaml.safe_load`` (so ``1e-3``, ``[64, 32]``,
``null`` and ``true`` work) and are checked like YAML keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from recsys_emb.utils import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is invalid; the message says where and what would work."""


def _hint(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(sorted(valid))})"


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a YAML value to the annotated field type ``tp``."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(f"{where}: null is not allowed here (expected {getattr(inner, '__name__', inner)})")
    if dataclasses.is_dataclass(inner) and isinstance(inner, type):
        if isinstance(value, inner):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {inner.__name__}, got {type(value).__name__}")
        return from_dict(inner, value, where=where)
    origin = typing.get_origin(inner)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(inner) or (Any,)
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(inner) or (Any, Any)
        return {str(k): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        choices = typing.get_args(inner)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}{_hint(str(value), [str(c) for c in choices])}")
        return value
    if inner is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if inner is float:
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads `1e-3` (no dot) as a string; accept what float() accepts.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if inner is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) mapping; unknown keys raise :class:`ConfigError`.

    Args:
        cls: the dataclass type.
        data: the mapping (e.g. from ``yaml.safe_load``).
        where: a prefix for error messages (file name and/or dotted path).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    check = getattr(cls, "check_keys", None)  # a class may refuse an outdated form with a message of its own
    if callable(check):
        try:
            check(data)
        except ValueError as e:
            raise ConfigError(f"{where or cls.__name__}: {e}") from e
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(f"unknown config key '{dotted}'{_hint(str(key), list(fields))}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain dict/list/scalars suitable for YAML."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=0.01"`` -> ``(["train", "lr"], 0.01)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like dotted.key=value (e.g. train.epochs=3)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}': empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value is not valid YAML ({e})") from e
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides to a nested mapping (in place; returns it).

    Keys are validated later by :func:`from_dict`, so typos get the same did-you-mean hint. A list
    element is addressed by its index (``embedding.groups.0.chain.0.unified.num_rows=1000``).
    """
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        for part in path[:-1]:
            if isinstance(node, list):
                child = node[_list_index(part, node, text)]
            else:
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
            if not isinstance(child, (dict, list)):
                raise ConfigError(f"override '{text}': '{part}' is a value, not a section")
            node = child
        if isinstance(node, list):
            node[_list_index(path[-1], node, text)] = value
        else:
            node[path[-1]] = value
    return data


def _list_index(part: str, node: list[Any], text: str) -> int:
    """A list element in a dotted key (``embedding.groups.0.chain``): a valid index or a clear error."""
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override '{text}': '{part}' must be an index of a list of {len(node)} entries")
    return int(part)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``; an empty file is ``{}``."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Load dataclass ``cls`` from YAML ``path`` (or defaults when None) plus dotted overrides."""
    data = load_yaml(path) if path is not None else {}
    apply_overrides(data, list(overrides or []))
    where = str(path) if path is not None else ""
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def save_config(obj: Any, path: str | Path) -> None:
    """Write a dataclass config as YAML atomically (round-trips through :func:`load_config`)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))


def run_config_and_dir(
    config: Path | None, run_dir: Path | None, resume: bool, *, example: str, suffix: str = "", tag: str = "run"
) -> tuple[Path, Path]:
    """The config file and run folder a ``train``-like command uses.

    ``resume`` reads ``RUN_DIR/config.yaml`` (``--run-dir`` required; a ``--config`` given too is
    reported and ignored); otherwise ``--config`` is required. The default run folder is
    ``runs/<config stem><suffix>-<time>``.

    Raises:
        ConfigError: a required flag is missing (``example`` shows a valid ``--config``).
    """
    from recsys_emb.utils import log
    import time

    if resume:
        if run_dir is None:
            raise ConfigError("--resume needs --run-dir (the run to continue)")
        path = Path(run_dir) / "config.yaml"
        if config is not None:
            log(f"[{tag}] --resume: using {path}, not {config}", important=True)
    else:
        if config is None:
            raise ConfigError(f"--config is required (e.g. --config {example})")
        path = Path(config)
    return path, Path(run_dir) if run_dir is not None else Path("runs") / f"{path.stem}{suffix}-{time.strftime('%Y%m%d-%H%M%S')}"
