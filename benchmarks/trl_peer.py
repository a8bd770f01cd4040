"""Peer benchmark P1: time to accuracy of Hugging Face TRL's GRPOTrainer on a Ponder task (arithmetic by default;
`--config configs/search.yaml` for the long chain-of-thought task).

What it measures: held-out greedy accuracy against GRPO training wall-clock (generation + reward + optimiser step,
evaluation excluded), and the training time to +10/+20/+30 points over the step-0 accuracy. The same numbers that
`benchmarks/time_to_accuracy.py` reports for Ponder, so the two tables can be compared line by line.

What is the same as Ponder's run (the `--config` file over the schema defaults in ponder/platform/config.py):
  - checkpoint: the SFT warm start `ponder sft` writes (artifacts/tiny/sft; artifacts/search/sft), float32;
  - prompts: the config's data.train rendered with the "think" template, fed in the exact order of Ponder's sync
    driver (its seeded PromptStream), so step k trains on the same prompts in both;
  - held-out set: the first --eval-prompts eval problems, greedy, --max-completion-length new tokens; correct = the
    math term is 1.0;
  - reward: the config's reward functions and weights (math 1.0 + format 0.1), called in-process;
  - GRPO: group size, prompts per step, lr and length cap from the config; one optimiser step per batch, no KL,
    group-std-normalised advantages,
    clip 0.2/0.28, token-level loss over the whole batch ("dapo"), AdamW(lr, betas 0.9/0.99, no decay),
    constant lr, grad-norm clip 1.0.
What differs (by design, it is the peer): generation with Hugging Face `generate` in the training process instead of
vLLM actors, no Ray, no DeepSpeed, no off-policy correction (TRL's samples are exactly on-policy here).

Run in its own venv (`make bench-trl-setup`); smoke example:

    .venv-trl/bin/python benchmarks/trl_peer.py --steps 2 --eval-every 1 --eval-prompts 16 --prompts-per-step 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from ponder.data.datasets import load_problems
from ponder.data.stream import PromptStream
from ponder.data.template import render_prompt
from ponder.eval.metrics import time_to_gain
from ponder.platform.config import PonderConfig, load_config
from ponder.rewards.registry import resolve
from ponder.types import Problem


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                                epilog="example:\n  .venv-trl/bin/python benchmarks/trl_peer.py --steps 40 "
                                       "--eval-every 5 --time-budget-s 600")
    p.add_argument("--config", default="configs/default.yaml", help="the Ponder config whose run this mirrors")
    p.add_argument("--model", default="artifacts/tiny/sft", help="HF-format SFT checkpoint (ponder sft)")
    p.add_argument("--steps", type=int, default=40, help="GRPO steps (one optimiser step each)")
    p.add_argument("--eval-every", type=int, default=5, help="held-out eval every N steps (and at 0 and the end)")
    p.add_argument("--eval-prompts", type=int, default=256)
    p.add_argument("--eval-batch-size", type=int, default=64, help="prompts per greedy `generate` call")
    p.add_argument("--prompts-per-step", type=int, default=None, help="default: the config's")
    p.add_argument("--samples-per-prompt", type=int, default=None, help="GRPO group size; default: the config's")
    p.add_argument("--lr", type=float, default=None, help="default: the config's learner.lr")
    p.add_argument("--max-completion-length", type=int, default=None, help="default: the config's rollout.max_tokens")
    p.add_argument("--gains", default="10,20,30", help="points over step 0 to report the time to")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--time-budget-s", type=float, default=None, help="stop after this much training wall-clock")
    p.add_argument("--out", default="benchmarks/results/trl_peer.json")
    args = p.parse_args(argv)
    cfg = load_config([args.config])
    for name, value in (("prompts_per_step", cfg.trainer.prompts_per_step),
                        ("samples_per_prompt", cfg.rollout.samples_per_prompt), ("lr", cfg.learner.lr),
                        ("max_completion_length", cfg.rollout.max_tokens)):
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.cfg = cfg
    return args


def train_dataset(cfg: PonderConfig, prompts_per_step: int, steps: int) -> Dataset:
    """Ponder's training prompts in the order its sync driver draws them: one PromptStream batch per step."""
    stream = PromptStream(load_problems(cfg.data.train, "train", cfg.data.task), prompts_per_step, cfg.seed)
    rows = [p for _ in range(steps) for p in stream.next()]
    return Dataset.from_dict({"prompt": [render_prompt(p.prompt, "think") for p in rows],
                              "answer": [p.answer for p in rows]})


def reward_fns(cfg: PonderConfig) -> tuple[list, list[float]]:
    """Ponder's configured reward functions wrapped for TRL, which passes dataset columns (`answer`) as kwargs."""
    fns, weights = [], []
    for spec in cfg.reward.functions:
        fn = resolve(spec.name)

        def trl_fn(completions, answer, _fn=fn, _opts=spec.options, **_):  # defaults bind this loop's values
            return [_fn(c, Problem("", a), **_opts) for c, a in zip(completions, answer)]

        trl_fn.__name__ = spec.name  # TRL logs rewards/<name>
        fns.append(trl_fn)
        weights.append(spec.weight)
    return fns, weights


@torch.no_grad()
def greedy_accuracy(model, tokenizer, problems: list[Problem], max_new_tokens: int, batch_size: int,
                    accuracy_from: str) -> float:
    """Share of held-out problems whose greedy completion scores 1.0 on the accuracy term (math)."""
    correct_fn = resolve(accuracy_from)
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(problems), batch_size):
        batch = problems[i : i + batch_size]
        enc = tokenizer([render_prompt(p.prompt, "think") for p in batch], return_tensors="pt", padding=True,
                        padding_side="left", add_special_tokens=False)  # as Ponder's engines tokenize prompts
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        correct += sum(correct_fn(t, p) == 1.0 for t, p in zip(texts, batch))
    model.train(was_training)
    return correct / len(problems)


class EvalAndClock(TrainerCallback):
    """Keeps a training-only clock (sum of step times, as Ponder's driver does) and evaluates between steps.

    Evaluation runs outside on_step_begin..on_step_end, so its time never reaches the clock.
    """

    def __init__(self, args: argparse.Namespace, tokenizer, eval_set: list[Problem]):
        self.args, self.tokenizer, self.eval_set = args, tokenizer, eval_set
        self.train_s, self.eval_s, self._t0 = 0.0, 0.0, 0.0
        self.evals: dict[int, dict[str, float]] = {}
        self.logs: list[dict] = []

    def evaluate(self, step: int, model) -> None:
        t0 = time.perf_counter()
        acc = greedy_accuracy(model, self.tokenizer, self.eval_set, self.args.max_completion_length,
                              self.args.eval_batch_size, self.args.cfg.reward.accuracy_from)
        self.eval_s += time.perf_counter() - t0
        self.evals[step] = {"eval/accuracy": acc, "time/train_elapsed_s": self.train_s}
        print(f"[eval] step {step}: accuracy {acc:.3f} after {self.train_s:.1f} s of training", flush=True)

    def on_train_begin(self, args, state, control, model=None, **_):
        self.evaluate(0, model)

    def on_step_begin(self, args, state, control, **_):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **_):
        self.train_s += time.perf_counter() - self._t0
        step, every = state.global_step, self.args.eval_every
        out_of_time = self.args.time_budget_s is not None and self.train_s >= self.args.time_budget_s
        if out_of_time:
            control.should_training_stop = True
        if (every and step % every == 0) or step == state.max_steps or out_of_time:
            self.evaluate(step, model)

    def on_log(self, args, state, control, logs=None, **_):
        self.logs.append({"step": state.global_step, **(logs or {})})


def grpo_config(args: argparse.Namespace, weights: list[float], output_dir: str) -> GRPOConfig:
    """TRL settings that mirror Ponder's defaults; each line names the Ponder setting it copies."""
    algo, learner = args.cfg.algo, args.cfg.learner
    completions = args.prompts_per_step * args.samples_per_prompt
    return GRPOConfig(
        output_dir=output_dir, max_steps=args.steps, seed=args.cfg.seed,
        num_generations=args.samples_per_prompt,  # rollout.samples_per_prompt
        per_device_train_batch_size=completions,  # counts completions, not prompts
        generation_batch_size=completions, gradient_accumulation_steps=1, num_iterations=1,  # one update per batch
        shuffle_dataset=False,  # the dataset is already in Ponder's PromptStream order
        beta=algo.kl_coef, epsilon=algo.clip_low, epsilon_high=algo.clip_high,
        scale_rewards="group" if algo.norm_adv_by_std else "none",
        loss_type="dapo",  # masked token sum / response tokens in the whole batch, as ponder.learner.losses
        reward_weights=weights,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,  # Ponder: fixed AdamW lr
        adam_beta1=learner.beta1, adam_beta2=learner.beta2, weight_decay=learner.weight_decay,
        max_grad_norm=learner.grad_clip,
        max_completion_length=args.max_completion_length, temperature=args.temperature, top_p=1.0, top_k=0,
        gradient_checkpointing=False, bf16=False, use_cpu=True,  # CPU: both only cost time here
        report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
    )


def report(args: argparse.Namespace, cb: EvalAndClock, wall_s: float, argv: list[str]) -> dict:
    """Markdown table and time-to-gain on stdout; the same as a dict for --out."""
    command = "python benchmarks/trl_peer.py " + " ".join(argv)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    gains = {}
    print(f"\nmachine: {machine}; command: {command}")
    print(f"whole run {wall_s:.0f} s, of which training {cb.train_s:.0f} s and evaluation {cb.eval_s:.0f} s\n")
    print("| step | train wall-clock (s) | held-out accuracy |\n| --- | --- | --- |")
    for step in sorted(cb.evals):
        e = cb.evals[step]
        print(f"| {step} | {e['time/train_elapsed_s']:.0f} | {e['eval/accuracy']:.3f} |")
    for points in map(int, args.gains.split(",")):
        hit = time_to_gain(cb.evals, points)
        gains[f"+{points}"] = {"step": hit[0], "train_s": hit[1]} if hit else None
        print(f"+{points} points: " + (f"step {hit[0]}, {hit[1]:.0f} s of training" if hit else "not reached"))
    steps_done = max(cb.evals)
    if steps_done:
        print(f"{cb.train_s / steps_done:.2f} s per training step")
    return {"peer": "trl.GRPOTrainer", "machine": machine, "command": command,
            "args": {k: v for k, v in vars(args).items() if k != "cfg"},
            "versions": versions(), "train_s": cb.train_s, "eval_s": cb.eval_s, "wall_s": wall_s,
            "steps_done": steps_done, "evals": {str(k): v for k, v in sorted(cb.evals.items())},
            "time_to_gain": gains, "train_logs": cb.logs}


def versions() -> dict[str, str]:
    import transformers
    import trl

    return {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__}


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    cfg = args.cfg
    eval_set = load_problems(cfg.data.eval, "eval", cfg.data.task)[: args.eval_prompts]
    fns, weights = reward_fns(cfg)
    callback = EvalAndClock(args, tokenizer, eval_set)
    output_dir = tempfile.mkdtemp(prefix="trl-peer-")  # TRL needs one; nothing is saved to it
    try:
        trainer = GRPOTrainer(model=model, reward_funcs=fns, args=grpo_config(args, weights, output_dir),
                              train_dataset=train_dataset(cfg, args.prompts_per_step, args.steps),
                              processing_class=tokenizer, callbacks=[callback])
        started = time.perf_counter()
        trainer.train()
        wall_s = time.perf_counter() - started
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    result = report(args, callback, wall_s, argv)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
