"""The trainer's configuration: the typed schema (:mod:`.schema`) and its resolution from YAML and
dotted overrides (:mod:`.loading`). Import from here: ``from treegrpo.config import resolve_config``."""

from treegrpo.config.loading import (
    check_keys, check_method, config_values, load_config, load_yaml, parse_overrides, preset_overrides, resolve_config,
    show_defaults, to_yaml, valid_keys, with_absolute_paths, with_reward_files,
)
from treegrpo.config.schema import (
    DEFAULT_PARENTS_PER_BATCH, MAX_STEPS, BuiltinPrompts, DataConfig, EvalConfig, MixedPrecision, Progress,
    SamplingConfig, TrainConfig, TrainerConfig, parse_log_with, reward_weights, validate,
)
from treegrpo.errors import ConfigError

__all__ = [
    "DEFAULT_PARENTS_PER_BATCH", "MAX_STEPS", "BuiltinPrompts", "ConfigError", "DataConfig", "EvalConfig", "MixedPrecision",
    "Progress", "SamplingConfig", "TrainConfig", "TrainerConfig", "check_keys", "check_method", "config_values",
    "load_config", "load_yaml", "parse_log_with", "parse_overrides", "preset_overrides", "resolve_config", "reward_weights",
    "show_defaults", "to_yaml", "valid_keys", "validate", "with_absolute_paths", "with_reward_files",
]
