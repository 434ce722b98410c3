"""Config: presets reproduce the named settings, YAML and overrides, and every invalid setting is caught."""

import itertools

import pytest

from dapo.config import (
    PRESETS,
    Config,
    ConfigError,
    apply_overrides,
    config_diff,
    config_from_dict,
    field_docs,
    load_config,
    preset,
)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_valid(name):
    preset(name).validate()


def test_dapo_preset_is_the_paper_run():
    c = preset("dapo")
    assert (c.algo.clip_eps_low, c.algo.clip_eps_high) == (0.2, 0.28)
    assert c.algo.loss_agg_mode == "token-mean"
    assert not c.uses_reference and not c.algo.use_kl_loss and not c.algo.use_kl_in_reward
    assert c.rollout.group_size == 16 and c.data.train_batch_size == 512 and c.actor.mini_batch_size == 32
    assert c.data.train_batch_size // c.actor.mini_batch_size == 16  # 16 gradient updates per step
    assert c.actor.ppo_epochs == 1 and c.actor.lr == 1e-6 and c.actor.lr_schedule == "constant"
    assert c.actor.weight_decay == 0.1 and c.actor.grad_clip == 1.0
    assert c.rollout.max_response_length == 20480 and c.algo.overlong.buffer_length == 4096
    assert c.algo.overlong.penalty_factor == 1.0 and c.algo.overlong.enable
    ds = c.algo.dynamic_sampling
    assert ds.enable and ds.metric == "acc" and ds.max_gen_batches == 10
    assert c.rollout.temperature == 1.0 and c.rollout.val_temperature == 1.0 and c.rollout.val_top_p == 0.7


def test_grpo_preset_is_deepseekmath_grpo():
    c = preset("grpo")
    assert c.algo.clip_eps_low == c.algo.clip_eps_high == 0.2
    assert c.algo.loss_agg_mode == "seq-mean-token-mean"
    assert c.algo.use_kl_loss and c.algo.kl_loss_type == "k3" and 0 < c.algo.kl_loss_coef < 0.01
    assert c.uses_reference and not c.algo.dynamic_sampling.enable and not c.algo.overlong.enable


@pytest.mark.parametrize("prefix", ["", "cpu_"], ids=["paper", "cpu"])
def test_ablation_ladder_adds_one_technique_per_rung(prefix):
    ladder = [
        "ablation_naive_grpo",
        "ablation_overlong_filtering",
        "ablation_clip_higher",
        "ablation_soft_overlong",
        "ablation_token_level_loss",
        "ablation_dynamic_sampling",
    ]
    configs = [preset(prefix + n).to_dict() for n in ladder]
    changed = [config_diff(a, b) for a, b in itertools.pairwise(configs)]
    assert changed[0] == ["algo.overlong.filter: False -> True"]
    assert changed[1] == ["algo.clip_eps_high: 0.2 -> 0.28"]
    assert any("algo.overlong.enable" in line for line in changed[2])
    assert all(line.startswith("algo.overlong.") for line in changed[2])
    assert changed[3] == ["algo.loss_agg_mode: 'seq-mean-token-mean' -> 'token-mean'"]
    assert any("dynamic_sampling.enable" in line for line in changed[4])
    assert any("use_kl_loss" in line for line in changed[4])
    # the last rung also drops KL (docs/algorithms.md says why) and triples the generation batch
    assert all(
        line.startswith(("algo.dynamic_sampling.", "algo.use_kl_loss", "data.gen_batch_size")) for line in changed[4]
    )
    from dapo.ablation import LADDERS

    assert LADDERS["paper" if not prefix else "cpu"] == tuple(prefix + n for n in ladder)


def test_ppo_preset_uses_critic():
    c = preset("ppo")
    assert c.uses_critic and c.rollout.group_size == 1


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "algo:\n  clip_eps_high: 0.3\n  dynamic_sampling:\n    max_gen_batches: 0\ntrainer:\n  total_steps: 7\n"
    )
    c = load_config("cpu_dapo", path, ["actor.lr=3e-5", "algo.dual_clip_c=null", "actor.betas=[0.9, 0.95]"])
    assert c.algo.clip_eps_high == 0.3 and c.algo.dynamic_sampling.max_gen_batches == 0
    assert c.trainer.total_steps == 7 and c.actor.lr == 3e-5 and c.algo.dual_clip_c is None
    assert c.actor.betas == (0.9, 0.95)


def test_a_field_of_two_types_takes_either():
    assert load_config("cpu_dapo", overrides=["data.task_level=3"]).data.task_level == 3
    assert load_config("cpu_dapo", overrides=["data.task_level=[1, 2]"]).data.task_level == [1, 2]
    with pytest.raises(ConfigError, match=r"data.task_level = 'easy': expected int or list"):
        load_config("cpu_dapo", overrides=["data.task_level=easy"])


def test_saved_config_round_trips():
    c = preset("grpo")
    assert config_from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    "override, message",
    [
        ("algo.clip_eps_low=1.5", "algo.clip_eps_low"),
        ("algo.clip_eps_high=-0.1", "algo.clip_eps_high"),
        ("algo.dual_clip_c=0.5", "algo.dual_clip_c"),
        ("algo.overlong.buffer_length=1000", "L_cache must not exceed L_max"),
        ("rollout.group_size=1", "need at least 2 responses"),
        ("actor.mini_batch_size=64", "cannot be larger than the batch"),
        ("actor.mini_batch_size=3", "must divide data.train_batch_size"),
        ("algo.loss_agg_mode=sum", "algo.loss_agg_mode"),
        ("algo.kl_loss_type=k9", "algo.kl_loss_type"),
        ("rollout.top_p=0", "rollout.top_p"),
        ("rollout.temperature=0", "rollout.temperature"),
        ("actor.micro_batch_max_tokens=10", "must hold one full sequence"),
        ("algo.dynamic_sampling.metric=length", "algo.dynamic_sampling.metric"),
        ("actor.lr=0", "actor.lr"),
        ("algo.dynamic_sampling.stop_when_full=true", r"rollout\.max_rows_in_flight = 0: must be > 0 with algo"),
        ("ray.reward_workers=-1", "ray.reward_workers"),
        ("ray.rollout_workers=2", r"ray\.rollout_workers = 2: needs trainer\.backend=ray"),  # did nothing before
        ("ray.reward_workers=1", r"ray\.reward_workers = 1: needs trainer\.backend=ray"),
        ("ray.sequence_parallel=2 ray.train_workers=3 trainer.backend=ray", "must divide ray.train_workers"),
        ("ray.offload=all trainer.backend=ray", r"ray\.offload.*needs ray\.strategy=fsdp2"),
        ("trainer.checkpoint_format=dcp", "trainer.checkpoint_format"),
        ("rollout.tensor_parallel_size=2", r"needs rollout\.engine=vllm"),
        ("algo.rollout_correction.level=token rollout.temperature=0.7", "needs rollout.temperature = 1"),
        ("data.task=words", "data.task = 'words': must be one of None, arith, arith_chat"),
        ("data.task_level=[1,9]", r"data.task_level = \[1, 9\]: must be a level of \[1, 2, 3, 4, 5\]"),
        ("data.task_level=[]", "data.task_level"),
    ],
)
def test_invalid_settings_name_the_field_and_rule(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("cpu_dapo", overrides=override.split())


def test_without_dynamic_sampling_one_round_must_fill_the_batch():
    with pytest.raises(ConfigError, match=r"data\.gen_batch_size"):
        load_config("cpu_dapo", overrides=["algo.dynamic_sampling.enable=false", "data.gen_batch_size=4"])


@pytest.mark.parametrize(
    "text, message",
    [
        ("algo:\n  clip_eps_hgh: 0.3\n", "unknown field 'algo.clip_eps_hgh'"),
        ("algorithm:\n  x: 1\n", "unknown field 'algorithm'"),
        ("algo: 3\n", "algo is a section"),
        ("trainer:\n  total_steps: many\n", "expected an integer"),
        ("algo:\n  overlong:\n    enable: 'yes'\n", "expected true or false"),
    ],
)
def test_bad_yaml_is_an_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config("cpu_dapo", path)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match=r"section\.field=value"):
        apply_overrides(Config(), ["actor.lr"])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("dapo2")


def test_every_field_has_a_docstring():
    rows = field_docs()
    missing = [name for name, _, doc in rows if not doc]
    assert not missing, f"fields without a docstring: {missing}"
    assert any(name == "algo.clip_eps_high" and "Eq. 10" in doc for name, _, doc in rows)


def test_a_field_added_since_a_checkpoint_was_written_is_no_difference_at_its_default():
    """A checkpoint's config from before a field existed lacks it: at its default (the old behaviour) it is no
    difference that would refuse a resume; set otherwise, it is."""
    from dapo.config import Config, config_diff

    old = Config().to_dict()
    del old["rollout"]["tensor_parallel_size"], old["ray"]["sequence_parallel"]
    assert config_diff(old, Config().to_dict(), defaults=Config().to_dict()) == []
    changed = Config()
    changed.rollout.tensor_parallel_size = 2
    assert config_diff(old, changed.to_dict(), defaults=Config().to_dict()) == ["rollout.tensor_parallel_size: 1 -> 2"]
    assert "rollout.tensor_parallel_size: '<absent>' -> 1" in config_diff(old, Config().to_dict())
