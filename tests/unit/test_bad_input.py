"""Every bad input a new user might give: exit 2, one line that names the key or file, and no Ray started.

Each case runs the real command line in a subprocess with RAY_TMPDIR pointed at the test's own directory, so a Ray
session started by mistake would leave its directory there. The network cases talk to local sockets: a closed port,
and a server that accepts connections and never answers (the probes give up after their bounded timeout)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest


@pytest.fixture(scope="module")
def silent_port():
    """A port whose server accepts every connection and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return
    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


@pytest.fixture(scope="module")
def closed_port():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    return port


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    model = root / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2", "max_position_embeddings": 4096}))
    (model / "model.safetensors").write_bytes(b"")  # present is all the pre-flight asks; nothing loads it
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text("{ not json")
    (root / "broken" / "model.safetensors").write_bytes(b"")
    (root / "no-weights").mkdir()
    (root / "no-weights" / "config.json").write_text("{}")
    (root / "rows.jsonl").write_text('{"prompt": "1+1", "answer": "2", "reward": "mathh"}\n')
    (root / "text.parquet").write_text("not parquet\n")
    (root / "not-a-dataset").mkdir()
    (root / "syntax.yaml").write_text("trainer:\n  steps: [3\n")
    (root / "tabs.yaml").write_text("trainer:\n\tsteps: 3\n")
    (root / "twice.yaml").write_text("trainer:\n  steps: 3\n  steps: 4\n")
    (root / "list.yaml").write_text("- trainer\n- steps\n")
    (root / "functions.yaml").write_text("reward:\n  functions: {name: math}\n")
    (root / "entry.yaml").write_text("reward:\n  functions:\n    - {name: math, wieght: 1.0}\n")
    (root / "dir.yaml").mkdir()
    return root


M = "model.path={root}/model"
CASES = {  # name: (arguments, what the one line must say); {root}, {silent}, {closed} are filled in
    "steps 0": (["train", M, "trainer.steps=0"], "trainer.steps = 0: must be >= 1"),
    "steps -1": (["train", M, "trainer.steps=-1"], "trainer.steps = -1: must be >= 1"),
    "no prompts": (["train", M, "trainer.prompts_per_step=0"], "trainer.prompts_per_step = 0: must be >= 1"),
    "no tokens": (["train", M, "rollout.max_tokens=0"], "rollout.max_tokens = 0: must be >= 1"),
    "lr 0": (["train", M, "learner.lr=0"], "learner.lr = 0.0: must be > 0"),
    "micro-batch 0": (["train", M, "learner.micro_batch_size=0"], "learner.micro_batch_size = 0: must be >= 1"),
    "eval every -1": (["train", M, "trainer.eval_every=-1"], "trainer.eval_every = -1: must be >= 0"),
    "no eval prompts": (["train", M, "trainer.eval_prompts=0"], "trainer.eval_prompts = 0: must be >= 1"),
    "no reward workers": (["train", M, "reward.num_workers=0"], "reward.num_workers = 0: must be >= 1"),
    "no rollout workers": (["train", M, "rollout.num_workers=0"], "rollout.num_workers = 0: must be >= 1"),
    "no KV cache": (["train", M, "rollout.kv_cache_gb=0"], "rollout.kv_cache_gb = 0.0: must be > 0"),
    "GPU memory 1.5": (["train", M, "rollout.gpu_memory_utilization=1.5"],
                       "rollout.gpu_memory_utilization = 1.5: must be in (0, 1]"),
    "one sample a group": (["train", M, "rollout.samples_per_prompt=1"], "every advantage is 0"),
    "accuracy from nothing": (["train", M, "reward.accuracy_from=code"],
                              "reward.accuracy_from = 'code' names no configured reward"),
    "a row's unknown reward": (["train", M, "data.train={root}/rows.jsonl"], "unknown reward 'mathh'"),
    "eval: broken config.json": (["eval", "{root}/broken"], "config.json is not valid JSON"),
    "eval: no weights": (["eval", "{root}/no-weights"], "has no weights"),
    "longer than the model": (["train", M, "rollout.max_model_len=8192"],
                              "rollout.max_model_len = 8192 is above the model's max_position_embeddings (4096"),
    "list for a mapping": (["train", M, "rollout.resources=[1,2]"], "'rollout.resources' must be a mapping, not a list"),
    "mapping for a list": (["train", "{root}/functions.yaml", M], "'reward.functions' must be a list, not a mapping"),
    "top level a list": (["train", "{root}/list.yaml", M], "list.yaml: the top level must be a mapping"),
    "model=foo": (["train", "model=foo"], "'model' must be a mapping, not a single value: 'foo' (set its keys, e.g."),
    "YAML syntax": (["train", "{root}/syntax.yaml", M], "syntax.yaml, line 3: not valid YAML"),
    "YAML tabs": (["train", "{root}/tabs.yaml", M], "tabs.yaml, line 2: not valid YAML"),
    "YAML duplicate key": (["train", "{root}/twice.yaml", M], "twice.yaml, line 3: not valid YAML: found duplicate key"),
    "text named .parquet": (["train", M, "data.train={root}/text.parquet"], "is not a readable Parquet file"),
    "not a saved dataset": (["train", M, "data.train={root}/not-a-dataset"], "is not a saved Hugging Face dataset"),
    "typo in a reward entry": (["train", "{root}/entry.yaml", M],
                               "unknown key 'wieght' in a reward.functions entry; did you mean 'weight'?"),
    "config is a directory": (["train", "{root}/dir.yaml", M], "dir.yaml' is a directory"),
    "resume a missing path": (["train", M, "--resume", "/nope/run"], "--resume /nope/run: no such checkpoint directory"),
    "budget list of lists": (["train", M, "rollout.thinking_budget=[[1]]"], "must be a list of whole numbers"),
    "tracking closed port": (["train", M, "tracking.uri=http://127.0.0.1:{closed}"],
                             "tracking.uri=http://127.0.0.1:{closed}: no answer"),
    "tracking never answers": (["train", M, "tracking.uri=http://127.0.0.1:{silent}"], "timed out"),
    "S3 without credentials": (["train", M, "checkpoint.dir=s3://bucket/run"], "no AWS credentials found"),
    "S3 endpoint never answers": (["train", M, "checkpoint.dir=s3://bucket/run",
                                   "checkpoint.endpoint_url=http://127.0.0.1:{silent}"], "no answer from the store"),
    "submit to a closed port": (["submit", "--address", "http://127.0.0.1:{closed}", "configs/default.yaml"],
                                "--address http://127.0.0.1:{closed}: no answer"),
    "submit to a silent server": (["submit", "--address", "http://127.0.0.1:{silent}", "configs/default.yaml"],
                                  "timed out"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line_and_starts_nothing(case, files, silent_port, closed_port, tmp_path):
    args, message = CASES[case]
    fill = {"root": files, "silent": silent_port, "closed": closed_port}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(RAY_TMPDIR=str(tmp_path / "ray"))
    if "credentials" not in case:
        env.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y", AWS_DEFAULT_REGION="us-east-1")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-m", "ponder.platform.cli", *(a.format(**fill) for a in args)],
                          capture_output=True, text=True, timeout=120, cwd=repo, env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"ponder {args[0]}: error: "), proc.stderr[-2000:]
    assert message.format(**fill) in lines[0]
    assert not (tmp_path / "ray").exists()  # no Ray session was started


def test_every_range_in_the_schema_is_a_config_error_just_outside_it():
    """Generic over the schema: the first value outside each field's range fails as a ConfigError naming the key."""
    from ponder.platform.config import ConfigError, PonderConfig, load_config
    from ponder.platform.validation import ranged_fields

    checked = 0
    for key, valid, default in ranged_fields(PonderConfig):
        if valid.choices:
            outside = 99 if isinstance(default, int) else "not-a-choice"
        else:
            outside = valid.lo if valid.lo_open else valid.lo - (1 if isinstance(default, int) else 0.5)
        with pytest.raises(ConfigError, match=f"{key} = "):
            load_config([], [f"{key}={outside}"])
        checked += 1
    assert checked > 60


def test_an_internal_error_is_a_traceback_exit_1_and_says_it_is_a_bug(monkeypatch, capsys):
    from ponder.platform import cli

    def broken(args):
        raise RuntimeError("boom")
    monkeypatch.setattr(cli, "cmd_config", broken)
    assert cli.main(["config", "show"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: boom" in err
    assert "ponder config: internal error (RuntimeError): this is a bug in Ponder" in err
