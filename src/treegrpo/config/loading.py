"""From a YAML file and dotted overrides to a checked :class:`~treegrpo.config.schema.TrainerConfig`, and back.

Resolution order (later wins): schema defaults -> the method preset's overrides -> the YAML file
-> dotted command-line overrides (``tree.trees=24``). Unknown keys and wrong types raise
:class:`ConfigError`, one line naming the key and the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from treegrpo.choices import Choice
from treegrpo.engine.methods import METHODS, preset_sections
from treegrpo.errors import ConfigError, did_you_mean
from treegrpo.config.schema import TrainerConfig, validate


# ----------------------------------------------------------------------------- key checks


def _hints(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass (string annotations evaluated)."""
    return typing.get_type_hints(cls)


def valid_keys(cls: type = TrainerConfig, prefix: str = "") -> dict[str, Any]:
    """Every dotted key of the schema mapped to its type hint (sections included)."""
    keys: dict[str, Any] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        hint = hints[f.name]
        keys[name] = hint
        if dataclasses.is_dataclass(hint):
            keys.update(valid_keys(hint, f"{name}."))  # type: ignore[arg-type]
    return keys


def _type_name(hint: Any) -> str:
    """Readable name of a type hint (``float``, ``list[float]``, ``Optional[str]``)."""
    text = getattr(hint, "__name__", None) if not typing.get_args(hint) else None
    return text or str(hint).replace("typing.", "")


def _nearest(key: str, candidates: Sequence[str]) -> str:
    """``; did you mean 'x'?`` for the closest candidate, or a pointer to the defaults."""
    return did_you_mean(key, candidates) or "; see `treegrpo config --show-defaults` for valid keys"


def check_keys(values: Any, source: str, prefix: str = "", keys: dict[str, Any] | None = None) -> None:
    """Reject keys of ``values`` (a nested dict) that the schema does not have."""
    keys = valid_keys() if keys is None else keys
    if not isinstance(values, dict):
        return
    for key, value in values.items():
        name = f"{prefix}{key}"
        if name not in keys:
            probe = f"{name}.{next(iter(value))}" if isinstance(value, dict) and value else name
            raise ConfigError(f"{source}: unknown config key '{probe}'{_nearest(probe, list(keys))}")
        hint = keys[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{name}' is a section; set its keys, e.g. {name}.<key>=value")
            check_keys(value, source, f"{name}.", keys)
        elif isinstance(value, dict) and not (hint is Any or Any in typing.get_args(hint)):
            raise ConfigError(f"{source}: '{name}' takes a value of type {_type_name(hint)}, not a map; e.g. {name}=<value>")


# ----------------------------------------------------------------------------- resolution


def _schema() -> DictConfig:
    """The structured schema with its defaults."""
    return typing.cast(DictConfig, OmegaConf.structured(TrainerConfig))


def _merge(base: DictConfig, values: dict[str, Any], source: str) -> DictConfig:
    """Merge ``values`` into ``base`` after key checks; type errors become one-line ConfigErrors."""
    check_keys(values, source)
    try:
        return typing.cast(DictConfig, OmegaConf.merge(base, values))
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", "") or "?"
        hint = valid_keys().get(key)
        choice = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Union else hint
        if isinstance(choice, type) and issubclass(choice, Choice):
            try:
                choice.parse(getattr(error, "value", None), key)
            except ConfigError as bad_choice:
                raise ConfigError(f"{source}: {bad_choice}") from None
        expected = f"; set it to a {_type_name(hint)}" if hint is not None else ""
        message = str(getattr(error, "msg", error)).splitlines()[0]
        raise ConfigError(f"{source}: bad value for '{key}': {message}{expected}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a plain dict (one-line errors for missing or malformed files)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {file} does not exist; pass the path of a YAML config (see configs/)")
    try:
        loaded = OmegaConf.load(file)
    except Exception as error:  # noqa: BLE001 - yaml raises many types
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{file}: not valid YAML ({first}); fix the file's syntax") from None
    values = OmegaConf.to_container(loaded, resolve=True) if loaded is not None else {}
    if not isinstance(values, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of sections (model:, data:, ...)")
    return typing.cast(dict[str, Any], values)


def _parses(items: Sequence[str]) -> bool:
    """Whether these ``key=value`` overrides parse together."""
    try:
        OmegaConf.to_container(OmegaConf.from_dotlist(list(items)), resolve=True)
    except Exception:  # noqa: BLE001 - grammar errors
        return False
    return True


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["tree.k=4", "train.lr=1e-5"]`` -> nested dict (values parsed as YAML scalars)."""
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} must look like dotted.key=value, e.g. tree.k=4")
    try:
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)), resolve=True)
    except Exception as error:  # noqa: BLE001 - grammar errors
        # the first override that does not parse on its own, else the first that clashes with the ones before it
        culprit = next((item for item in overrides if not _parses([item])), None) or next(
            (item for n, item in enumerate(overrides) if not _parses(overrides[: n + 1])), None)
        named = f"override {culprit!r}" if culprit is not None else f"overrides {list(overrides)}"
        raise ConfigError(f"cannot parse {named} ({type(error).__name__}); use key=value with a YAML scalar, list "
                          "or mapping as the value (quote text with special characters)") from None
    return typing.cast(dict[str, Any], parsed)


def check_method(name: Any, source: str) -> str:
    """The preset name, or a one-line error naming the nearest one."""
    if not isinstance(name, str) or name not in METHODS:
        try:
            preset_sections(str(name))
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None
    return str(name)


def preset_overrides(method: str) -> dict[str, Any]:
    """The preset's section overrides as a nested dict (plus the method name)."""
    return {"method": method, **preset_sections(method)}


def resolve_config(
    yaml_values: dict[str, Any] | None = None,
    overrides: Sequence[str] = (),
    *,
    source: str = "config",
    method: str | None = None,
    check: bool = True,
) -> TrainerConfig:
    """Defaults -> preset -> YAML values -> dotted overrides, checked; returns the typed config."""
    yaml_values = dict(yaml_values or {})
    cli_values = parse_overrides(overrides)
    name = method or cli_values.get("method") or yaml_values.get("method") or TrainerConfig.method
    name = check_method(name, "overrides" if "method" in cli_values else source)
    config = _merge(_schema(), preset_overrides(name), f"preset {name}")
    config = _merge(config, yaml_values, source)
    config = _merge(config, cli_values, "override")
    typed = typing.cast(TrainerConfig, OmegaConf.to_object(config))
    if check:
        validate(typed)
    return typed


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainerConfig:
    """Resolve the YAML file at ``path`` (or only defaults) plus ``overrides``; a reward module beside the file
    (``mymod:score`` with ``mymod.py`` next to it) is recorded by its absolute file path."""
    values = load_yaml(path) if path is not None else {}
    cfg = resolve_config(values, overrides, source=str(path) if path is not None else "defaults")
    return cfg if path is None else with_reward_files(cfg, [Path(path).expanduser().resolve().parent])


def _renamed_rewards(spec: Any, rename: Any) -> Any:
    """A reward spec (a name, or a map of names) with every name passed through ``rename``."""
    if isinstance(spec, str):
        return rename(spec)
    if isinstance(spec, dict):
        return {rename(str(name)): value for name, value in spec.items()}
    return spec


def with_reward_files(cfg: TrainerConfig, folders: Sequence[Path]) -> TrainerConfig:
    """``cfg`` with import-path rewards (training and judges) that are files in ``folders`` named by absolute path."""
    from treegrpo.rewards import locate_import_path

    def rename(name: str) -> str:
        return locate_import_path(name, folders)

    evaluation = dataclasses.replace(cfg.eval, rewards=_renamed_rewards(cfg.eval.rewards, rename))
    return dataclasses.replace(cfg, reward=_renamed_rewards(cfg.reward, rename), eval=evaluation)


def _local_path(value: Optional[str]) -> Optional[str]:
    """``value`` as an absolute path when it names an existing file or folder; else unchanged (hub ids, aliases)."""
    if value is None or ":" in value and not Path(value).exists():
        return value
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


def with_absolute_paths(cfg: TrainerConfig) -> TrainerConfig:
    """A copy of ``cfg`` whose path-valued keys are absolute, so RUN/config.yaml works from any folder.

    Local data files and a local model folder become absolute; hub ids (and ``builtin:shapes``) stay
    as typed; ``output_dir`` is always made absolute; an import-path reward found as a file in the
    working folder is named by that file.
    """
    data = dataclasses.replace(cfg.data, prompts=_local_path(cfg.data.prompts), eval_prompts=_local_path(cfg.data.eval_prompts))
    model = dataclasses.replace(cfg.model, path=_local_path(cfg.model.path) or cfg.model.path)
    cfg = with_reward_files(cfg, [Path.cwd()])  # a reward module in the working folder, by its file
    return dataclasses.replace(cfg, data=data, model=model, output_dir=str(Path(cfg.output_dir).expanduser().resolve()))


def _plain(value: Any) -> Any:
    """Containers with every choice replaced by its string value."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value.value if isinstance(value, Choice) else value


def to_yaml(cfg: TrainerConfig) -> str:
    """The resolved config as YAML (what RUN/config.yaml holds); choices are written as their values."""
    return OmegaConf.to_yaml(_plain(OmegaConf.to_container(OmegaConf.structured(cfg))))


def config_values(cfg: TrainerConfig) -> dict[str, Any]:
    """The resolved config as a plain nested dict of YAML values (what trackers store once)."""
    return typing.cast(dict[str, Any], _plain(OmegaConf.to_container(OmegaConf.structured(cfg))))


def show_defaults(method: str | None = None) -> str:
    """The defaults (with a method preset applied) as YAML."""
    return to_yaml(resolve_config({}, (), method=method, source="defaults", check=False))
