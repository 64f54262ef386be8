"""The one base of every trainer's configuration: a typed dataclass with one coercer.

``TrainConfig`` (contrastive), ``FusionTrainConfig`` and ``ItmTrainConfig`` derive from
:class:`TrainerConfig`. Each is built from a dict (a YAML/JSON file, ``key=value`` overrides,
a checkpoint's saved copy) by :meth:`TrainerConfig.from_dict`, which converts every value to its
field's type and names the field when it cannot; each is saved as JSON beside the weights it
trained (``to_json``/:meth:`TrainerConfig.save`), so a trained artefact knows what built it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from xmr.errors import XmrError
from xmr.io.atomic import atomic_write_json

C = TypeVar("C", bound="TrainerConfig")

_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")
_NULL = ("none", "null")


@dataclass
class TrainerConfig:
    """Base of the trainers' configurations (subclasses add the fields).

    Class attributes:
        KIND: how errors name the options ("training", "fusion training", "ITM training").
        CONFIG_FILE: the JSON file :meth:`save` writes beside the weights.
    """

    KIND: ClassVar[str] = "training"
    CONFIG_FILE: ClassVar[str] = "train_config.json"

    def validate(self: C) -> C:
        """Check the values (subclasses override); raise XmrError naming the bad field."""
        return self

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, directory: str | Path, *, data: dict[str, Any] | None = None) -> Path:
        """Write ``directory/CONFIG_FILE`` atomically (``data``: the dict to write, default
        :meth:`to_dict`, for trainers that record more beside the options)."""
        path = Path(directory) / self.CONFIG_FILE
        atomic_write_json(path, self.to_dict() if data is None else data)
        return path

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, where: str = "config") -> C:
        """Build from ``data`` (values converted to each field's type; unknown keys refused with
        the closest known name). Does not :meth:`validate` (a partial config may be completed
        first); the trainers validate what they are given."""
        known = {f.name: f for f in fields(cls) if f.init}
        unknown = [k for k in data if k not in known]
        if unknown:
            hints = []
            for k in unknown:  # the closest known name, for a misspelt one
                close = difflib.get_close_matches(k, known, n=1)
                hints.append(f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
            noun = "option" if len(unknown) == 1 else "options"
            # A short list helps; a long one buries the hint: name where they are described.
            listed = (
                f"known: {', '.join(known)}"
                if len(known) <= 15
                else f"see {cls.__module__}.{cls.__name__}"
            )
            raise XmrError(f"{where}: unknown {cls.KIND} {noun} {', '.join(hints)} ({listed})")
        hints = typing.get_type_hints(cls)
        values = {k: coerce(k, v, hints[k], where, cls.KIND) for k, v in data.items()}
        return cls(**values)


def coerce(name: str, value: Any, annotation: Any, where: str, kind: str = "training") -> Any:
    """Convert a YAML/JSON/``key=value`` value to the field's type.

    Numbers written as text (``"1e-4"``: a string to YAML 1.1) become numbers, ``"true"``/``"no"``
    booleans, a whole float an int; ``None`` (or ``"none"``/``"null"`` for a field that is not
    text) is accepted only where the type allows it. Raises XmrError naming the field.
    """
    base, optional = _unwrap(annotation)
    label = f"{where}: {kind} option {name}={value!r}"
    if value is None or (
        optional and base is not str and isinstance(value, str) and value.lower() in _NULL
    ):
        if not optional:
            raise XmrError(f"{where}: {kind} option '{name}' cannot be null")
        return None
    origin = typing.get_origin(base) or base
    if origin is bool:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise XmrError(f"{label} is not true/false")
    if origin is str:
        if isinstance(value, bool):  # YAML reads yes/no/true/false as booleans
            return "yes" if value else "no"
        return str(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise XmrError(f"{label} is not a mapping")
        return dict(value)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        try:
            return tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise XmrError(f"{label} is not a list of numbers") from None
    if origin in (int, float):
        if isinstance(value, bool):
            raise XmrError(f"{label} is not a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise XmrError(f"{label} is not a number") from None
        if origin is int:
            if not number.is_integer():
                raise XmrError(f"{label} is not a whole number")
            return int(number)
        return number
    return value


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """``int | None`` -> (int, True); ``int`` -> (int, False)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else annotation), len(args) < len(
            typing.get_args(annotation)
        )
    return annotation, False


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lr=1e-4", "freeze_text=true", "valid_split=null"]`` -> a dict with YAML-typed values
    (each trainer's :meth:`TrainerConfig.from_dict` converts them to its fields' types)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise XmrError(f"override '{item}' is not key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out[key] = value
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML (or JSON) file; errors name the file and line."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise XmrError(f"{p}: cannot read config ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        line = exc.object.count(b"\n", 0, exc.start) + 1
        raise XmrError(
            f"{p}:{line}: not valid UTF-8 (byte 0x{exc.object[exc.start]:02x})"
        ) from None
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        col = f" at column {mark.column + 1}" if mark is not None else ""
        raise XmrError(f"{where}: not valid YAML ({what}{col})") from None
    if not isinstance(loaded, dict):
        raise XmrError(f"{p}: expected a mapping of training options")
    return loaded


def load_trainer_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    **fields_: Any,
) -> C:
    """Defaults, then the YAML (or JSON) file at ``path``, then ``fields_`` (None: not given),
    then ``overrides``; validated."""
    data: dict[str, Any] = {}
    if path is not None:
        data.update(read_config_file(path))
    data.update({k: v for k, v in fields_.items() if v is not None})
    data.update(overrides or {})
    return cls.from_dict(data, where=str(path) if path else "config").validate()
