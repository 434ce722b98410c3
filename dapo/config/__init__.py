"""The run configuration: nested dataclasses, the single source of truth for a run.

Every field has a docstring underneath it (unit, paper value, verl key). Presets are plain functions that
return a full `Config`; `load_config` applies a YAML file and dotted command-line overrides on top of a
preset, and `Config.validate` rejects invalid settings at start with the field and the rule.

The package, by what each module owns (imports point down this list, never up):
- `schema`: the dataclasses (`Config` and its sections), `ConfigError` and the derived facts (`Config`
  properties); imports nothing from the project but `dapo.errors`.
- `checks`: the rules behind `Config.validate`; the only module here that imports `dapo.algo` (the tuples of
  valid choices) and `dapo.data.tasks` (the built-in tasks and their levels).
- `presets`: the named presets (`PRESETS`, `preset`) and the one table of the paper's Table 1 ladder
  (`ABLATION_RUNGS`) that both ablation ladders and `dapo ablate` are generated from.
- `io`: YAML files and dotted overrides (`load_config`, `apply_overrides`), `config_from_dict`, `config_diff`,
  `field_docs`.

Everything is importable from `dapo.config` itself.
"""

from dapo.config.checks import validate
from dapo.config.io import apply_overrides, config_diff, config_from_dict, field_docs, load_config
from dapo.config.presets import (
    ABLATION_PREFIXES,
    ABLATION_RUNGS,
    PRESETS,
    AblationRung,
    ablation_ladder,
    cpu_dapo,
    dapo,
    dr_grpo,
    grpo,
    ppo,
    preset,
)
from dapo.config.schema import (
    ActorConfig,
    AlgoConfig,
    Config,
    ConfigError,
    CriticConfig,
    DataConfig,
    DynamicSamplingConfig,
    LoraConfig,
    ModelConfig,
    OverlongConfig,
    RayConfig,
    RewardConfig,
    RolloutConfig,
    RolloutCorrectionConfig,
    TrainerConfig,
    WarmStartConfig,
)

__all__ = [
    "ABLATION_PREFIXES",
    "ABLATION_RUNGS",
    "PRESETS",
    "AblationRung",
    "ActorConfig",
    "AlgoConfig",
    "Config",
    "ConfigError",
    "CriticConfig",
    "DataConfig",
    "DynamicSamplingConfig",
    "LoraConfig",
    "ModelConfig",
    "OverlongConfig",
    "RayConfig",
    "RewardConfig",
    "RolloutConfig",
    "RolloutCorrectionConfig",
    "TrainerConfig",
    "WarmStartConfig",
    "ablation_ladder",
    "apply_overrides",
    "config_diff",
    "config_from_dict",
    "cpu_dapo",
    "dapo",
    "dr_grpo",
    "field_docs",
    "grpo",
    "load_config",
    "ppo",
    "preset",
    "validate",
]
