import subprocess
import sys

import pytest

from ponder.platform.config import ConfigError, PonderConfig, flatten, load_config, to_yaml


def test_defaults_load_and_overrides_apply(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("rollout:\n  samples_per_prompt: 4\ntrainer:\n  steps: 3\n")
    cfg = load_config([str(f)], ["trainer.steps=5"])
    assert (cfg.rollout.samples_per_prompt, cfg.trainer.steps) == (4, 5)  # CLI wins over the file
    assert isinstance(cfg, PonderConfig)


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'rollout.temprature'; did you mean 'rollout.temperature'"):
        load_config([], ["rollout.temprature=0.5"])


def test_unknown_section_in_file_names_file_and_suggestion(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("learnr:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'learnr'; did you mean 'learner'"):
        load_config([str(f)])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"bad value for 'rollout.samples_per_prompt'"):
        load_config([], ["rollout.samples_per_prompt=many"])


def test_cross_field_rules():
    with pytest.raises(ConfigError, match=r"divisible by rollout.num_workers"):
        load_config([], ["trainer.prompts_per_step=7", "rollout.num_workers=2"])
    with pytest.raises(ConfigError, match=r"temperature > 0"):
        load_config([], ["rollout.temperature=0"])
    with pytest.raises(ConfigError, match=r"kl_estimator"):
        load_config([], ["algo.kl_estimator=k9"])
    with pytest.raises(ConfigError, match=r"pipeline.mode = 'asynch': must be one of sync, one_step_off, async"):
        load_config([], ["pipeline.mode=asynch"])
    with pytest.raises(ConfigError, match=r"use pipeline.mode=async \(max_staleness=0"):
        load_config([], ["pipeline.dynamic_sampling=true"])
    with pytest.raises(ConfigError, match=r"algo.off_policy = 'vtrace': must be one of none, tis, decoupled"):
        load_config([], ["algo.off_policy=vtrace"])
    with pytest.raises(ConfigError, match=r"samples_per_prompt = 1: advantages are relative to each prompt's group"):
        load_config([], ["rollout.samples_per_prompt=1"])
    # the algorithms' own rules
    for name in ("reinforce_pp", "ppo"):  # no group needed: one sample a prompt is fine
        assert load_config([], [f"algo.name={name}", "rollout.samples_per_prompt=1"]).algo.name == name
    with pytest.raises(ConfigError, match=r"algo.kl_in_reward .* algo.name=reinforce_pp and algo.kl_coef > 0"):
        load_config([], ["algo.kl_in_reward=true", "algo.kl_coef=0.1"])
    with pytest.raises(ConfigError, match=r"learner.packing .* set it \(e.g. 4096"):
        load_config([], ["learner.packing=true"])
    with pytest.raises(ConfigError, match=r"critic.num_ranks \(1\) and then critic.num_minibatches \(3\)"):
        load_config([], ["algo.name=ppo", "critic.num_minibatches=3"])
    with pytest.raises(ConfigError, match=r"per-step critic scores .* are not used by it yet"):
        load_config([], ["algo.name=ppo", "reward.functions=[{name: reward_model, options: {per_step: true}}]"])
    with pytest.raises(ConfigError, match=r"critic.lr = 0.0: must be > 0"):
        load_config([], ["critic.lr=0"])
    assert load_config([], []).critic.lr == 1e-4 and load_config([], []).learner.lr == 5e-5


OUT_OF_RANGE = [
    ("trainer.steps=0", "trainer.steps = 0: must be >= 1"),
    ("trainer.steps=-1", "trainer.steps = -1: must be >= 1"),
    ("trainer.prompts_per_step=0", "trainer.prompts_per_step = 0: must be >= 1"),
    ("rollout.max_tokens=0", "rollout.max_tokens = 0: must be >= 1"),
    ("rollout.max_tokens=-5", "rollout.max_tokens = -5: must be >= 1"),
    ("learner.lr=0", "learner.lr = 0.0: must be > 0"),
    ("learner.lr=-1e-4", "learner.lr = -0.0001: must be > 0"),
    ("learner.micro_batch_size=0", "learner.micro_batch_size = 0: must be >= 1"),
    ("trainer.eval_every=-1", "trainer.eval_every = -1: must be >= 0"),
    ("trainer.eval_prompts=0", "trainer.eval_prompts = 0: must be >= 1"),
    ("reward.num_workers=0", "reward.num_workers = 0: must be >= 1"),
    ("rollout.num_workers=0", "rollout.num_workers = 0: must be >= 1"),  # would divide by zero in a cross-field rule
    ("rollout.kv_cache_gb=0", "rollout.kv_cache_gb = 0.0: must be > 0"),
    ("rollout.gpu_memory_utilization=1.5", "rollout.gpu_memory_utilization = 1.5: must be in (0, 1]"),
    ("learner.zero_stage=4", "learner.zero_stage = 4: must be one of 0, 1, 2, 3"),
    ("model.dtype=fp8", "model.dtype = 'fp8': must be one of float32, bfloat16, float16"),
]


@pytest.mark.parametrize("override,message", OUT_OF_RANGE, ids=[o for o, _ in OUT_OF_RANGE])
def test_a_value_outside_its_range_fails_at_load(override, message):
    with pytest.raises(ConfigError) as raised:
        load_config([], [override])
    assert message in str(raised.value)


def test_every_range_is_in_the_config_reference():
    from ponder.platform.config import PonderConfig
    from ponder.platform.config_reference import render
    from ponder.platform.validation import ranged_fields

    reference = {line.split(" | ")[0]: line for line in render() if line.startswith("| `")}
    rows = list(ranged_fields(PonderConfig))
    assert len(rows) > 60
    for key, valid, _ in rows:
        assert f"| {valid} |" in reference[f"| `{key}`"], key


def test_pipeline_modes_resolve_to_a_staleness_bound():
    from ponder.platform.pipeline import Schedule

    one_step_off = load_config([], ["pipeline.mode=one_step_off", "pipeline.max_staleness=5"]).pipeline
    assert Schedule.of(one_step_off) == Schedule(max_staleness=1, interrupt=False)
    streaming = load_config([], ["pipeline.mode=async", "pipeline.max_staleness=3"]).pipeline
    assert Schedule.of(streaming) == Schedule(max_staleness=3, interrupt=True)


def test_missing_file_and_malformed_override():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(["nope.yaml"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config([], ["trainer.steps"])


def test_yaml_round_trip_and_flatten():
    cfg = load_config([], ["rollout.samples_per_prompt=3"])
    assert "samples_per_prompt: 3" in to_yaml(cfg)
    assert flatten(cfg)["rollout.samples_per_prompt"] == 3


def test_cli_typo_fails_before_anything_starts(tmp_path):
    """Exit code 2, the key and the suggestion on stderr, and no Ray session created."""
    proc = subprocess.run([sys.executable, "-m", "ponder.platform.cli", "train", "trainer.stepz=3"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown config key 'trainer.stepz'; did you mean 'trainer.steps'?" in proc.stderr
    assert "ray" not in proc.stderr.lower()
