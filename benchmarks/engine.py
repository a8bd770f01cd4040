"""B2: useful tokens/s of the rollout engine (vLLM behind `RolloutWorker.generate`) against Hugging Face `generate`.

Same model, same prompts, same long-tailed length mix: each request gets its own response length, drawn lognormal
(median `--median-len`, sigma 1, capped at `--cap`, seeded), and EOS is ignored so that every length is exact.
- vLLM: one `generate` call with the lengths set per request (`RolloutRequest.max_tokens`, `Sampling(ignore_eos)`);
  continuous batching lets short requests leave and frees their slots.
- Hugging Face: static batches (`--hf-batch`, default the whole set in one batch, and batches of 16), padded left, each
  batch generating up to its longest length (min_new_tokens = max_new_tokens = batch max, so EOS never stops it).
  Only each request's own length counts as useful; the rest of a batch's padding work is what static batching wastes.
Sampling at temperature `--temperature`, top_p 1, no top-k on both sides. Cores: HF runs with
torch.set_num_threads(`--hf-threads`, default 2); vLLM's compute threads are bound to `--vllm-cores` (default `auto`,
vLLM's own choice: on 2 cores that is core 0, with core 1 left to its scheduler and this process's engine thread, so
both sides use the whole machine; `0-1` or `all` binds compute to every core). On a machine busy with other work, use
one core each (--hf-threads 1 --vllm-cores 0): two threads where only one core is free were ~70x slower per step.
The engine is started once and reused; each engine gets one untimed warm-up call. Repetitions are interleaved (vLLM,
HF..., vLLM, HF..., ...) and the median of each is reported. The model is the default tiny Qwen2 built fresh (random
weights; speed is the point) unless `--model DIR` is given. Usage:

    .venv/bin/python benchmarks/engine.py [--requests 64] [--repeats 3] [--hf-batch all,16] [--model DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ponder.actors.rollout import RolloutWorker, Sampling
from ponder.data.datasets import load_problems
from ponder.data.stream import make_requests
from ponder.data.tiny_model import build_tiny_model
from ponder.platform.config import RolloutConfig, TaskConfig, TinyModelConfig


def make_workload(args) -> list:
    """Requests from the held-out arithmetic split, each with its own seeded lognormal length."""
    problems = load_problems("embedded:arithmetic", "eval", TaskConfig(num_eval=max(256, args.requests)))
    rng = random.Random(args.seed)
    lengths = [min(args.cap, max(1, round(rng.lognormvariate(math.log(args.median_len), 1.0))))
               for _ in range(args.requests)]
    requests = make_requests(problems[: args.requests], "think", args.seed, step=0)
    return [dataclasses.replace(r, max_tokens=n) for r, n in zip(requests, lengths)]


def run_vllm(worker: RolloutWorker, requests: list, args) -> tuple[int, float]:
    sampling = Sampling(n=1, temperature=args.temperature, top_p=1.0, max_tokens=args.cap, ignore_eos=True)
    started = time.perf_counter()
    out = worker.generate(requests, sampling)
    seconds = time.perf_counter() - started
    useful = sum(len(t.response_ids) for t in out)
    # ignore_eos + per-request max_tokens must give exactly the drawn lengths, or the comparison is off
    assert useful == sum(r.max_tokens for r in requests), (useful, sum(r.max_tokens for r in requests))
    return useful, seconds


class HfEngine:
    """The model under transformers, generating static, left-padded batches."""

    def __init__(self, model_dir: str):
        from transformers import AutoTokenizer, Qwen2ForCausalLM

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        self.model = Qwen2ForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def run(self, requests: list, batch_size: int, args, seed: int) -> tuple[int, float]:
        torch.manual_seed(seed)
        useful, seconds = 0, 0.0
        for i in range(0, len(requests), batch_size):
            batch = requests[i : i + batch_size]
            longest = max(r.max_tokens for r in batch)
            # same token ids as the engine sees (it tokenizes without special tokens)
            enc = self.tokenizer([r.prompt_text for r in batch], add_special_tokens=False, padding=True,
                                 return_tensors="pt")
            started = time.perf_counter()
            with torch.inference_mode():
                out = self.model.generate(**enc, do_sample=True, temperature=args.temperature, top_p=1.0, top_k=0,
                                          min_new_tokens=longest, max_new_tokens=longest,
                                          pad_token_id=self.tokenizer.pad_token_id)
            seconds += time.perf_counter() - started
            assert out.shape[1] - enc["input_ids"].shape[1] == longest
            useful += sum(r.max_tokens for r in batch)  # a request's tokens past its own length are waste
        return useful, seconds


def hf_batches(spec: str, n: int) -> list[int]:
    return [n if s == "all" else int(s) for s in spec.split(",")]


def report(rows: dict[str, list[tuple[int, float]]], args, lengths: list[int]) -> None:
    print(f"\nB2 — {args.requests} requests, lengths lognormal(median {args.median_len}, sigma 1, cap {args.cap}, "
          f"seed {args.seed}): total {sum(lengths)} tokens, longest {max(lengths)}; temperature {args.temperature}; "
          f"median of {args.repeats} interleaved repetitions\n")
    rate = {name: statistics.median(u / s for u, s in runs) for name, runs in rows.items()}
    first = next(iter(rows))
    print("| engine | useful tokens | seconds | tokens/s | vLLM speedup (vLLM tok/s / this tok/s) |")
    print("|---|---|---|---|---|")
    for name, runs in rows.items():
        seconds = statistics.median(s for _, s in runs)
        print(f"| {name} | {runs[0][0]} | {seconds:.2f} | {rate[name]:.0f} | {rate[first] / rate[name]:.2f}x |")


def machine() -> str:
    import transformers
    import vllm

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}; torch "
            f"{torch.__version__}, vllm {vllm.__version__}, transformers {transformers.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a Hugging Face model directory (default: the tiny model, built fresh)")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--median-len", type=int, default=150)
    parser.add_argument("--cap", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--hf-batch", default="all,16", help="comma-separated static batch sizes; 'all' = one batch")
    parser.add_argument("--kv-cache-gb", type=float, default=1.0)
    parser.add_argument("--hf-threads", type=int, default=2)
    parser.add_argument("--vllm-cores", default="auto", help="VLLM_CPU_OMP_THREADS_BIND: auto, all, or e.g. 0 / 0-1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.vllm_cores != "auto":  # read by the engine's worker process, which inherits this environment
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{os.cpu_count() - 1}" if args.vllm_cores == "all" \
            else args.vllm_cores
    print(machine(), flush=True)
    print(f"command: python {' '.join(sys.argv)}", flush=True)
    print(f"HF torch threads: {args.hf_threads}; vLLM cores: {os.environ.get('VLLM_CPU_OMP_THREADS_BIND', 'auto')}",
          flush=True)
    torch.set_num_threads(args.hf_threads)
    # a `timeout` or kill must still reach `worker.close()`, or the engine's EngineCore process outlives this one
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(build_tiny_model(TinyModelConfig(out_dir=f"{tmp}/model")))
        max_pos = json.loads((Path(model) / "config.json").read_text())["max_position_embeddings"]
        requests = make_workload(args)
        cfg = RolloutConfig(max_model_len=min(4096, max_pos), max_tokens=args.cap, kv_cache_gb=args.kv_cache_gb)
        worker = RolloutWorker(model, "float32", cfg, seed=args.seed)
        try:
            hf = HfEngine(model)
            warm = [dataclasses.replace(r, max_tokens=8) for r in requests[:2]]
            run_vllm(worker, warm, args), hf.run(warm, 2, args, seed=0)  # untimed: first-call costs
            batches = hf_batches(args.hf_batch, len(requests))
            rows: dict[str, list] = {"vLLM (RolloutWorker.generate)": []}
            rows.update({f"HF generate, static batch {b}": [] for b in batches})
            for rep in range(args.repeats):
                rows["vLLM (RolloutWorker.generate)"].append(run_vllm(worker, requests, args))
                for b in batches:
                    rows[f"HF generate, static batch {b}"].append(hf.run(requests, b, args, seed=rep))
                print(f"  rep {rep}: " + ", ".join(f"{k}: {v[-1][0] / v[-1][1]:.0f} tok/s" for k, v in rows.items()),
                      flush=True)
        finally:
            worker.close()
    report(rows, args, [r.max_tokens for r in requests])


if __name__ == "__main__":
    main()
