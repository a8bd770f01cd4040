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
    with pytest.raises(ConfigError, match=r"pipeline.mode must be sync, one_step_off or async, got 'asynch'"):
        load_config([], ["pipeline.mode=asynch"])
    with pytest.raises(ConfigError, match=r"use pipeline.mode=async \(max_staleness=0"):
        load_config([], ["pipeline.dynamic_sampling=true"])
    with pytest.raises(ConfigError, match=r"algo.off_policy must be none, tis or decoupled"):
        load_config([], ["algo.off_policy=vtrace"])
    with pytest.raises(ConfigError, match=r"cpu_bind must name cores"):
        load_config([], ["learner.cpu_bind=one"])


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
