"""`ponder` command line: train, eval, sft, export, init-model, submit, config show.

Positional arguments that contain `=` are config overrides (`trainer.steps=10`); the others are YAML files, merged
in order over the schema defaults. Everything is validated before Ray or any engine starts.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from ponder.platform.config import ConfigError, PonderConfig, load_config, to_yaml
from ponder.transport import TransportError
from ponder.platform.probes import Unreachable, check_dashboard, check_store, check_tracking

EXAMPLES = {
    "train": "ponder train configs/default.yaml trainer.steps=20 rollout.samples_per_prompt=8\n"
             "  ponder train configs/default.yaml checkpoint.dir=s3://bucket/runs/demo --resume auto",
    "eval": "ponder eval outputs/run/final_model configs/default.yaml eval.k=8\n"
            "  ponder eval --run 5b22bab9e3f54c0c8d6f1a2b3c4d5e6f configs/default.yaml\n"
            "  ponder eval artifacts/search/sft configs/search.yaml eval.k=16 'eval.thinking_budgets=[64,256]'",
    "sft": "ponder sft configs/default.yaml sft.steps=200",
    "export": "ponder export 5b22bab9e3f54c0c8d6f1a2b3c4d5e6f outputs/export.jsonl configs/default.yaml "
              "--pass-rate 0 1\n  ponder export RUN_ID s3://bucket/flywheel/v1 --max-tokens 256  (a directory: a "
              "Hugging Face dataset)",
    "init-model": "ponder init-model configs/default.yaml tiny_model.num_layers=2",
    "submit": "ponder submit --address http://127.0.0.1:8265 configs/default.yaml trainer.steps=50 --follow",
    "config": "ponder config show configs/default.yaml rollout.samples_per_prompt=4",
}


class UsageError(Exception):
    """Bad input the user must fix; printed without a traceback."""


class NothingToDo(Exception):
    """The command has nothing left to do (e.g. resuming a finished run): said, and exit 0."""


def split_args(items: list[str]) -> tuple[list[str], list[str]]:
    """Config files and key=value overrides, each in the order given.

    >>> split_args(["a.yaml", "x.y=1"])
    (['a.yaml'], ['x.y=1'])
    """
    return [i for i in items if "=" not in i], [i for i in items if "=" in i]


def _config(args) -> PonderConfig:
    files, overrides = split_args(args.items)
    return load_config(files, overrides)


def preflight(cfg: PonderConfig, model_path: str) -> None:
    """Checks that need the filesystem: model, datasets, reward and environment names. Runs before Ray starts."""
    from ponder.data.datasets import load_problems
    from ponder.rewards.registry import check_options

    if not model_path.startswith(("s3://", "hf://")):
        check_model_dir(model_path, cfg.rollout.max_model_len)
    critic_model = cfg.algo.ppo.critic_model
    if cfg.algo.name == "ppo" and critic_model and not critic_model.startswith(("s3://", "hf://")):
        try:
            check_model_dir(critic_model, cfg.rollout.max_model_len)
        except UsageError as e:
            raise UsageError(f"algo.ppo.critic_model: {e}") from None
    for spec in cfg.reward.functions:
        try:
            check_options(spec.name, dict(spec.options), cfg.reward.timeout_s)
        except ValueError as e:
            raise UsageError(f"reward.functions: {e}") from None
    if cfg.rollout.env.name:
        from ponder.envs.registry import make

        try:  # built and closed at once: it holds nothing until its first step
            make(cfg.rollout.env.name, dict(cfg.rollout.env.options)).close()
        except (ValueError, TypeError) as e:
            raise UsageError(f"rollout.env: {e}") from None
    names = [spec.name for spec in cfg.reward.functions]
    if cfg.reward.accuracy_from not in names:
        raise UsageError(f"reward.accuracy_from = {cfg.reward.accuracy_from!r} names no configured reward; use one of "
                         f"{', '.join(names)}")
    if cfg.algo.replay_data:
        from ponder.data.template import has_completion

        shown = sum(map(has_completion, load_problems(cfg.algo.replay_data, "train", cfg.data.task)))
        if shown < cfg.algo.replay_per_step:
            raise UsageError(f"algo.replay_data {cfg.algo.replay_data!r} has {shown} rows with a worked 'solution' "
                             f"(or exported completion), fewer than algo.replay_per_step = {cfg.algo.replay_per_step}; "
                             "lower replay_per_step or give a dataset of worked solutions")
    for source, split in ((cfg.data.train, "train"), (cfg.data.eval, "eval")):
        for name in sorted({p.reward for p in load_problems(source, split, cfg.data.task) if p.reward}):
            try:
                check_options(name, {}, cfg.reward.timeout_s)
            except ValueError as e:
                raise UsageError(f"dataset {source}: a row's reward: {e}") from None


def check_model_dir(path: str, max_model_len: int) -> None:
    """A Hugging Face model directory: a readable config.json, weights, and room for rollout.max_model_len."""
    hint = ("build the embedded one with `ponder init-model` and `ponder sft`, or set model.path to a Hugging Face "
            "model directory")
    config = Path(path) / "config.json"
    if not config.is_file():
        raise UsageError(f"model {path!r} not found (no config.json); {hint}")
    try:
        meta = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"model {path!r}: config.json is not valid JSON ({e}); re-export the model") from None
    if not isinstance(meta, dict):
        raise UsageError(f"model {path!r}: config.json is not a JSON object; re-export the model")
    if not any(next(Path(path).glob(p), None) for p in ("*.safetensors", "pytorch_model*.bin")):
        raise UsageError(f"model {path!r} has no weights (*.safetensors or pytorch_model*.bin); {hint}")
    positions = meta.get("max_position_embeddings")
    if isinstance(positions, int) and max_model_len > positions:
        raise UsageError(f"rollout.max_model_len = {max_model_len} is above the model's max_position_embeddings "
                         f"({positions} in {config}); set rollout.max_model_len <= {positions}")


def resolve_resume(cfg: PonderConfig, spec: str | None):
    """`--resume` → (checkpoint target, checkpoint to start from or None, MLflow run id to continue or None).
    Runs before Ray starts: a wrong path or run id fails here."""
    from ponder.storage.checkpoints import CheckpointError, CheckpointTarget, locate

    c = cfg.checkpoint
    target = CheckpointTarget.of(c, cfg.trainer.output_dir)
    try:
        if spec is None or spec == "auto":
            store = target.store()
            name = store.latest()
            if name is None:
                if spec == "auto":
                    print(f"note: no checkpoint under {target.url} yet; starting a new run")
                return target, None, None
            meta = store.manifest(name)["meta"]
            if spec is None:
                if meta["step"] < meta["last_step"]:
                    raise UsageError(
                        f"{target.url} holds checkpoints of an unfinished run ({meta['run_id']}, at step "
                        f"{meta['step']} of {meta['last_step']}); continue it with --resume auto, or choose another "
                        "checkpoint.dir / trainer.output_dir")
                print(f"note: replacing the finished run {meta['run_id']}'s checkpoints under {target.url}")
                store.clear()
                target.under("critic").store().clear()  # PPO's value model, if the run had one
                return target, None, None
        else:
            uri = spec
            if "/" in spec and not (spec.startswith("s3://") or Path(spec).exists()):
                raise UsageError(f"--resume {spec}: no such checkpoint directory; give an existing checkpoint path, "
                                 "an s3:// URI, an MLflow run id, or auto")
            if not (spec.startswith("s3://") or Path(spec).exists()):
                from ponder.platform.tracking import checkpoint_of_run

                uri = checkpoint_of_run(cfg.tracking, spec)  # LookupError: neither a path nor a known run id
            target, name = locate(uri, c.endpoint_url, c.keep_last)
            meta = target.store().manifest(name)["meta"]
            for newer in target.store().discard_after(name):
                print(f"note: going on from {name}: removed the later checkpoint {target.uri(newer)}")
            target.under("critic").store().discard_after(name)  # PPO's value model's follow the policy's
    except (CheckpointError, LookupError) as e:
        raise UsageError(f"--resume {spec}: {e}") from None
    if meta["step"] >= cfg.trainer.steps:  # nothing would be trained (or registered)
        raise NothingToDo(f"run {meta['run_id']} is already at step {meta['step']} ({target.uri(name)}) and "
                          f"trainer.steps is {cfg.trainer.steps}: nothing to train. To train it further, raise "
                          f"trainer.steps above {meta['step']} and resume again")
    print(f"resuming run {meta['run_id']} from {target.uri(name)} (step {meta['step']})")
    return target, name, meta["run_id"]


def cmd_train(args) -> None:
    cfg = _config(args)
    preflight(cfg, cfg.model.path)
    check_tracking(cfg.tracking.uri)
    check_store(cfg.checkpoint.dir or "", cfg.checkpoint.endpoint_url)
    if args.resume and args.resume.startswith("s3://"):
        check_store(args.resume, cfg.checkpoint.endpoint_url)
    target, start, run_id = resolve_resume(cfg, args.resume)
    if start is not None and cfg.algo.name == "star" and cfg.algo.star.restart:
        raise UsageError("algo.star.restart=true trains every iteration on all examples kept so far, which a "
                         "checkpoint does not hold yet: a STaR run with restart cannot be resumed; start it again or "
                         "use algo.star.restart=false")
    from ponder.platform.driver import train

    from ponder.eval.metrics import time_to_gain

    result = train(cfg, target, start, run_id)
    if result.resumed_from:
        print(f"resumed from: {', '.join(result.resumed_from)}")
    first, last = result.evals[min(result.evals)], result.evals[max(result.evals)]
    print(f"\nheld-out accuracy: {first['eval/accuracy']:.3f} (start) -> {last['eval/accuracy']:.3f} "
          f"(step {max(result.evals)})")
    curve = "  ".join(f"{s}:{e['eval/accuracy']:.2f}" for s, e in sorted(result.evals.items()))
    print(f"held-out accuracy by step: {curve}")
    for points in (10, 20):
        hit = time_to_gain(result.evals, points)
        print(f"+{points} points: " + (f"step {hit[0]}, {hit[1]:.0f} s of training" if hit else "not reached"))
    print(f"MLflow run: {result.run_id}  (tracking uri {cfg.tracking.uri}; `mlflow ui --backend-store-uri "
          f"{cfg.tracking.uri}`)")
    a = result.accounting
    dropped = ", ".join(f"{k.split('_', 1)[1]} {v:.0f}" for k, v in a.items() if k.startswith("samples/dropped_") and v)
    print(f"samples: {a['samples/generated']:.0f} generated, {a['samples/trained']:.0f} trained, "
          f"dropped: {dropped or 'none'}")
    outputs = [f"{result.output_dir}/final_model"] if cfg.trainer.save_final_model else []
    print(f"outputs: {', '.join(outputs + [f'{result.output_dir}/curves.png'])}")
    if result.checkpoint:
        print(f"last checkpoint: {result.checkpoint}")
    if result.registered:
        print(f"registered model: {result.registered} (`ponder eval --run {result.run_id}`)")


def cmd_eval(args) -> None:
    if args.model_dir and "=" in args.model_dir or args.model_dir and args.model_dir.endswith((".yaml", ".yml")):
        args.items.insert(0, args.model_dir)  # `ponder eval --run ID configs/x.yaml`: the first item is a config
        args.model_dir = None
    if (args.model_dir is None) == (args.run is None):
        raise UsageError("give a model directory or --run RUN_ID (one of them)")
    cfg = _config(args)
    check_tracking(cfg.tracking.uri)
    model_dir = args.model_dir
    if args.run:
        import tempfile

        from ponder.platform.tracking import download_model_of_run

        try:
            model_dir = download_model_of_run(cfg.tracking, args.run, tempfile.mkdtemp(prefix="ponder-eval-"))
        except LookupError as e:
            raise UsageError(str(e)) from None
        print(f"model of run {args.run}: {model_dir}")
    preflight(cfg, model_dir)
    from ponder.platform.evaluate import evaluate_model

    result = evaluate_model(model_dir, cfg, progress=lambda what: print(f"eval: {what}", flush=True))
    width = max(map(len, result.metrics))
    for k, v in result.metrics.items():
        print(f"{k:<{width}}  {v:.4f}")
    run_id, files = log_eval(cfg, model_dir, result, args.run)
    print(f"\nMLflow run {run_id} ({'the training run' if args.run else 'new'}), artifacts under eval/:")
    for path in files:
        print(f"  {path}")


def log_eval(cfg: PonderConfig, model_dir: str, result, run_id: str | None) -> tuple[str, list[str]]:
    """The evaluation into MLflow — the training run `run_id`, or a new run — as metrics, the scaling table (CSV and
    JSON) and its PNGs; local copies under <trainer.output_dir>/eval. Returns the run id and the local files."""
    import csv
    import json
    from dataclasses import replace

    from ponder.eval.scaling import points_to_rows
    from ponder.platform.config import flatten
    from ponder.platform.plots import plot_scaling
    from ponder.platform.tracking import Tracker

    out = Path(cfg.trainer.output_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    rows = points_to_rows(result.points)
    files = []
    if rows:
        with open(out / "scaling.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        (out / "scaling.json").write_text(json.dumps(rows, indent=1))
        files = [str(out / "scaling.csv"), str(out / "scaling.json"),
                 *plot_scaling(result.points, cfg.rollout.max_tokens, out)]
    tracking = replace(cfg.tracking, run_name=f"eval {cfg.tracking.run_name or Path(model_dir).name}")
    tracker = Tracker(tracking, {**flatten(cfg), "eval.model_dir": model_dir}, to_yaml(cfg), run_id=run_id)
    try:
        tracker.log_metrics(result.metrics, step=0)
        for path in files:
            tracker.log_artifact(path, "eval")
    finally:
        tracker.finish()
    return tracker.run_id, files


def cmd_sft(args) -> None:
    cfg = _config(args)
    check_tracking(cfg.tracking.uri)
    from ponder.learner.sft import run_sft
    from ponder.platform.export import sft_logger

    log, finish = sft_logger(cfg)
    status = "FAILED"
    try:
        out = run_sft(cfg.sft, cfg.data, log=log)
        status = "FINISHED"
    except ValueError as e:  # a dataset without anything to train toward
        raise UsageError(str(e)) from None
    finally:
        run_id = finish(status)
    print(f"SFT warm start written to {out}" + (f" (MLflow run {run_id})" if run_id else " (cached: same settings "
                                                                                       "and data)"))


def cmd_export(args) -> None:
    cfg = _config(args)
    check_tracking(cfg.tracking.uri)
    if args.out.startswith("s3://"):
        check_store(args.out.rpartition("/")[0], cfg.checkpoint.endpoint_url)
    elif "://" in args.out:
        raise UsageError(f"--out {args.out}: give a local path or s3://bucket/key")
    from ponder.data.traces import TraceFilter
    from ponder.platform.export import export_run

    keep = TraceFilter(correct_only=not args.include_incorrect, min_reward=args.min_reward,
                       pass_rate=tuple(args.pass_rate) if args.pass_rate else None, max_tokens=args.max_tokens)
    try:
        done = export_run(cfg, args.run_id, args.out, keep)
    except LookupError as e:
        raise UsageError(str(e)) from None
    left_out = ", ".join(f"{k} {v}" for k, v in sorted(done.left_out.items())) or "none"
    print(f"exported {done.rows} of run {args.run_id}'s {done.traces} traces to {done.uri} (left out: {left_out}); "
          f"sha256 {done.digest[:12]}")
    print(f"train on it: ponder sft <config> data.train={done.uri} sft.init_dir=<fresh model>  "
          f"(or ponder train ... data.train={done.uri})")


def cmd_init_model(args) -> None:
    cfg = _config(args)
    from ponder.data.tiny_model import build_tiny_model

    print(f"tiny model written to {build_tiny_model(cfg.tiny_model)}")


def cmd_submit(args) -> None:
    cfg = _config(args)  # validate locally first: a typo should not cost a cluster round trip
    check_dashboard(args.address)
    from ponder.platform.jobs import submit

    submit(args.address, args.items, working_dir=args.working_dir, follow=args.follow,
           pip=args.pip, job_id=args.job_id, cfg=cfg)


def cmd_config(args) -> None:
    print(to_yaml(_config(args)), end="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ponder", description="RL post-training for reasoning models.",
                                     epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {EXAMPLES[name]}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(fn=fn)
        return p

    items_help = "YAML config files and key=value overrides, applied in order over the schema defaults"
    p = add("train", cmd_train, "Train a policy on Ray (vLLM rollouts, DeepSpeed learner) with algo.name = grpo, "
            "rloo, reinforce_pp, gspo or star (docs/algorithms.md); pipeline.mode=sync|one_step_off|async chooses how generation and training overlap "
            "(configs/async.yaml: the demo streaming). Checkpoints go to checkpoint.dir (local or s3://).")
    p.add_argument("items", nargs="*", help=items_help)
    p.add_argument("--resume", metavar="auto|PATH|s3://...|RUN_ID", default=None,
                   help="continue a run from a checkpoint, in the same MLflow run at the next step: `auto` = the "
                        "latest under checkpoint.dir (a new run if there is none), a checkpoint root or one "
                        "checkpoint (.../step_00000020), or an MLflow run id")
    p = add("eval", cmd_eval, "Held-out accuracy of a saved model: greedy pass@1, sampled pass@k and maj@k; with "
                              "eval.k > 1 and eval.thinking_budgets, test-time scaling curves. Logged to MLflow.")
    p.add_argument("model_dir", nargs="?", default=None, help="a Hugging Face-format model directory")
    p.add_argument("items", nargs="*", help=items_help)
    p.add_argument("--run", metavar="RUN_ID", default=None,
                   help="evaluate the model registered by this MLflow run (found through tracking.uri)")
    add("sft", cmd_sft, "Warm-start the tiny model on worked solutions (cached).") \
        .add_argument("items", nargs="*", help=items_help)
    p = add("export", cmd_export, "Export a run's verified traces as a dataset (JSONL, Parquet or a Hugging Face "
                                  "directory; local or s3://), deduplicated, for `ponder sft` or `ponder train`.")
    p.add_argument("run_id", help="the MLflow run whose traces to export (it ran with trainer.save_traces=true)")
    p.add_argument("out", help="where: a .jsonl or .parquet file, or a directory (Hugging Face dataset); local or s3://")
    p.add_argument("items", nargs="*", help=items_help + " (tracking.uri finds the run)")
    p.add_argument("--include-incorrect", action="store_true", help="keep traces whose answer did not verify")
    p.add_argument("--min-reward", type=float, default=None, help="keep traces with at least this reward")
    p.add_argument("--pass-rate", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                   help="keep traces of groups whose pass rate p is LO < p < HI (0 1: neither all wrong nor all right)")
    p.add_argument("--max-tokens", type=int, default=None, help="keep responses of at most this many tokens")
    add("init-model", cmd_init_model, "Build the tiny Qwen2 model and tokenizer offline (cached).") \
        .add_argument("items", nargs="*", help=items_help)
    p = add("submit", cmd_submit, "Submit `ponder train` to a Ray cluster through the Ray Jobs API.")
    p.add_argument("items", nargs="*", help=items_help)
    p.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://127.0.0.1:8265")
    p.add_argument("--working-dir", default=".", help="directory shipped to the cluster (default: .)")
    p.add_argument("--pip", nargs="*", default=None, help="extra pip packages for the job's runtime environment")
    p.add_argument("--job-id", default=None, help="submission id (default: generated)")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    p = add("config", cmd_config, "Print the resolved configuration as YAML.")
    p.add_argument("action", choices=["show"])
    p.add_argument("items", nargs="*", help=items_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ponder.data.datasets import DatasetError

    try:
        args.fn(args)
    except (ConfigError, DatasetError, UsageError, Unreachable, TransportError) as e:
        print(f"ponder {args.command}: error: {e}", file=sys.stderr)
        return 2
    except NothingToDo as e:
        print(f"ponder {args.command}: {e}")
        return 0
    except KeyboardInterrupt:
        print(f"\nponder {args.command}: interrupted; actors stopped", file=sys.stderr)
        return 130
    except Exception as e:
        # only reachable once Ray is imported anyway
        from ponder.platform.driver import TrainingStopped
        from ponder.platform.pipeline import PipelineError
        from ponder.platform.pools import ActorFailed

        if isinstance(e, (PipelineError, TrainingStopped)):
            print(f"ponder {args.command}: error: {e}", file=sys.stderr)
            return 1
        if not (isinstance(e, ActorFailed) or type(e).__module__.startswith("ray.")):
            traceback.print_exc()
            print(f"ponder {args.command}: internal error ({type(e).__name__}): this is a bug in Ponder, not in your "
                  "input; please report it with the traceback above", file=sys.stderr)
            return 1
        # an actor died or raised: Ray's message carries the actor's own traceback, which is the cause to show
        print(f"ponder {args.command}: error: a Ray actor failed; all actors were stopped. Cause:\n{e}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
