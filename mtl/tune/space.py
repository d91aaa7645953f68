"""The search space of ``mtl-tune``: ``conf/tune/<name>.yaml``, typed and checked when loaded.

Each parameter is a key path of the model config (mtl/models/model_config.py) and a distribution::

    params:
      optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      architecture.experts: {type: int, low: 2, high: 8, step: 2}
      architecture.tower_units: {type: categorical, choices: [[32], [64, 32]]}
      tasks.purchase.weight: {type: float, low: 0.5, high: 2.0}    # the task labelled purchase
    fixed:                                                         # set in every trial
      trainer.epochs: 4

``tasks.<label>.<key>`` names a key of the task with that label (tasks are a list). Loading fails
with a ConfigError naming the parameter for an unknown key path, bounds that are not a range, an
empty list of choices, or a value at a bound (or any choice) that the model config rejects, so a
bad space stops ``mtl-tune`` before any training starts.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from mtl.config import ConfigError, parse_typed
from mtl.models.model_config import ModelConfig, TaskConfig, check_model_config

KINDS = ("float", "int", "categorical")
_PARAM_KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}
# conf/tune/, next to the project's conf/models/
SPACES_DIR = Path(__file__).resolve().parents[2] / "conf" / "tune"


@dataclass(frozen=True)
class Param:
    """One tuned key of the model config and its distribution."""

    name: str  # the model-config key path, also the Optuna parameter name
    kind: str  # float | int | categorical
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        """Sample this parameter in an Optuna trial."""
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        # Optuna's choices are scalars: a list choice (layer sizes) is sampled by its JSON text.
        labels = [_label(c) for c in self.choices]
        picked = trial.suggest_categorical(self.name, labels)
        return self.choices[labels.index(picked)]

    def corners(self) -> list[Any]:
        """The values the load-time check tries: both bounds, or every choice."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]


@dataclass(frozen=True)
class SearchSpace:
    name: str
    path: str
    params: tuple[Param, ...]
    fixed: dict[str, Any]

    def sample(self, trial) -> dict[str, Any]:
        return {p.name: p.suggest(trial) for p in self.params}

    def apply(self, model_config: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        """The model config (a plain dict, as in TrainPlan.model_config) with the fixed keys and
        ``values`` set; the input is not changed."""
        out = copy.deepcopy(model_config)
        for key, value in {**self.fixed, **values}.items():
            set_key(out, key, value)
        return out

    def digest(self) -> str:
        """What identifies the space in a study (a resumed study must search the same space)."""
        return json.dumps({"params": [dataclasses.asdict(p) for p in self.params], "fixed": self.fixed}, default=str)


def space_path(name_or_path: str) -> Path:
    """``default`` -> conf/tune/default.yaml; a value ending in .yaml/.yml is a file path."""
    if name_or_path.endswith((".yaml", ".yml")):
        return Path(name_or_path)
    return SPACES_DIR / f"{name_or_path}.yaml"


def load_space(name_or_path: str, base: ModelConfig) -> SearchSpace:
    """Load and check a search space against the model config it tunes (``base``)."""
    path = space_path(name_or_path)
    where = f"search space {path}"
    if not path.is_file():
        known = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
        raise ConfigError(f"tuning.space: {where} not found (spaces under conf/tune/: {known})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must hold a mapping with 'params' (and optionally 'fixed')")
    unknown = sorted(set(raw) - {"params", "fixed"})
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; a space has 'params' and 'fixed'")
    params_raw, fixed = raw.get("params") or {}, raw.get("fixed") or {}
    if not isinstance(params_raw, dict) or not params_raw:
        raise ConfigError(f"{where}: 'params' must map model-config keys to distributions (at least one)")
    if not isinstance(fixed, dict):
        raise ConfigError(f"{where}: 'fixed' must map model-config keys to values")
    base_dict = dataclasses.asdict(base)
    labels = base.task_names
    for key in fixed:
        _check_key_path(str(key), labels, f"{where}: fixed {key!r}")
    params = []
    for name, spec in params_raw.items():
        name = str(name)
        if name in fixed:
            raise ConfigError(f"{where}: parameter {name!r} is also in 'fixed'")
        _check_key_path(name, labels, f"{where}: parameter {name!r}")
        params.append(_param(name, spec, f"{where}: parameter {name!r}"))
    space = SearchSpace(name=path.stem, path=str(path), params=tuple(params), fixed=dict(fixed))
    # Every bound and choice must make a model config that loads (types and cross-key rules).
    _check_model(space.apply(base_dict, {}), f"{where}: fixed")
    for p in space.params:
        for value in p.corners():
            _check_model(space.apply(base_dict, {p.name: value}), f"{where}: parameter {p.name!r} = {value!r}")
    return space


def set_key(model: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key path in a model-config dict; ``tasks.<label>.<key>`` addresses a task."""
    parts = key.split(".")
    if parts[0] == "tasks":
        task = next(t for t in model["tasks"] if t["label"] == parts[1])
        task[parts[2]] = value
        return
    node = model
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _check_key_path(key: str, labels: tuple[str, ...], where: str) -> None:
    parts = key.split(".")
    if parts[0] == "tasks":
        if len(parts) != 3:
            raise ConfigError(f"{where}: a task key is tasks.<label>.<key>, e.g. tasks.click.weight")
        if parts[1] not in labels:
            raise ConfigError(f"{where}: {parts[1]!r} is not one of the model's tasks {list(labels)}")
        tunable = [f.name for f in dataclasses.fields(TaskConfig) if f.name != "label"]
        if parts[2] not in tunable:
            raise ConfigError(f"{where}: unknown task key {parts[2]!r}; a task has {tunable}")
        return
    tp: Any = ModelConfig
    for i, part in enumerate(parts):
        done = ".".join(parts[:i])
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            if part not in hints:
                raise ConfigError(
                    f"{where}: unknown model-config key {'.'.join(parts[: i + 1])!r}"
                    f" ({done or 'the model config'} has {sorted(hints)})"
                )
            tp = hints[part]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            raise ConfigError(f"{where}: {done!r} is a value, not a section")
    if dataclasses.is_dataclass(tp):
        raise ConfigError(f"{where}: {key!r} is a section; name one of its keys")


def _param(name: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a distribution such as {{type: float, low: 0.0, high: 1.0}}")
    kind = spec.get("type")
    if kind not in KINDS:
        raise ConfigError(f"{where}: type must be one of {list(KINDS)}, got {kind!r}")
    unknown = sorted(set(spec) - _PARAM_KEYS[kind])
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown} for a {kind} distribution")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list")
        labels = [_label(c) for c in choices]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{where}: choices are listed more than once")
        return Param(name, kind, choices=tuple(choices))
    for key in ("low", "high"):
        value = spec.get(key)
        number = int if kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
            raise ConfigError(f"{where}: {key} must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}")
    low, high = spec["low"], spec["high"]
    if low >= high:
        raise ConfigError(f"{where}: low ({low}) must be below high ({high})")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log-scaled range must have low > 0, got {low}")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, int if kind == "int" else (int, float)) or step <= 0:
            raise ConfigError(f"{where}: step must be a positive {'integer' if kind == 'int' else 'number'}")
        if log:
            raise ConfigError(f"{where}: step and log cannot be combined")
    return Param(name, kind, low=low, high=high, log=log, step=step)


def _check_model(model: dict[str, Any], where: str) -> None:
    try:
        check_model_config(parse_typed(ModelConfig, model))
    except ConfigError as exc:
        raise ConfigError(f"{where}: the model config rejects it: {exc}") from exc


def _label(choice: Any) -> Any:
    if choice is None or isinstance(choice, (bool, int, float, str)):
        return choice
    return json.dumps(choice, sort_keys=True)


def choice_of(param: Param, label: Any) -> Any:
    """The choice of a categorical parameter that Optuna stored as ``label``."""
    return next(c for c in param.choices if _label(c) == label)
