"""B3: what pushing new weights into the rollout engine costs, as a multiple of a plain memory copy of the same bytes.

One push = the learner side, `ShmSender.publish` of a CPU fp32 state dict (safetensors file in /dev/shm +
XXH3-128 + manifest + atomic rename), then the engine side, `RolloutWorker.load_weights` (verify: XXH3-128 again; then
vLLM's `reload_weights` from that directory, with the engine paused). The baseline is a plain memory copy of the same
bytes: `dst.copy_(src)` of every tensor into tensors allocated (and touched) beforehand, one torch thread, so the
ratio says how far the push is from the speed of memory itself. Two sizes: the default tiny model and one of >= 100 MB
fp32 (built with `build_tiny_model`, larger hidden/intermediate sizes). Each size gets one untimed warm-up push
(steady state, as in training), then `--repeats` pushes; medians are reported.

Breakdown: `verify` is timed once more on its own after each push; that is the receiver's hash, and the sender's hash
is the same pass over the same file, so write = publish - verify and reload = load_weights - verify. For reference,
the raw bytes are also written to a file in /dev/shm with no format, hash or reload. Everything written to /dev/shm
lives in one temporary directory removed at exit. Usage:

    .venv/bin/python benchmarks/weight_push.py [--repeats 5] [--sizes tiny,large]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ponder.actors.rollout import RolloutWorker
from ponder.data.tiny_model import build_tiny_model
from ponder.platform.config import RolloutConfig, TinyModelConfig
from ponder.transport.shm import ShmReceiver, ShmSender

# 768 hidden x 2048 intermediate x 4 layers: ~28M parameters, ~113 MB in fp32
SIZES = {"tiny": {}, "large": {"hidden_size": 768, "num_layers": 4, "num_heads": 12, "num_kv_heads": 12,
                               "intermediate_size": 2048}}


def timed(fn, *args):
    started = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - started


def load_state_dict(model_dir: str) -> dict[str, torch.Tensor]:
    """The learner's view: its full fp32 state dict on the CPU, under Hugging Face names."""
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def memcpy(src: dict, dst: dict) -> float:
    started = time.perf_counter()
    for name, tensor in src.items():
        dst[name].copy_(tensor)
    return time.perf_counter() - started


def shm_write(src: dict, path: Path) -> float:
    """The same bytes into one /dev/shm file, nothing else: the floor of any file-based transport."""
    started = time.perf_counter()
    with path.open("wb") as f:
        for tensor in src.values():
            f.write(tensor.numpy().data)
    elapsed = time.perf_counter() - started
    path.unlink()
    return elapsed


def bench_size(name: str, args, tmp: str, shm: str) -> dict[str, float]:
    model = str(build_tiny_model(TinyModelConfig(out_dir=f"{tmp}/{name}", **SIZES[name])))
    state = load_state_dict(model)
    dst = {k: torch.empty_like(v) for k, v in state.items()}
    memcpy(state, dst)  # touch every page once: the baseline is the copy itself, not first-touch page faults
    num_bytes = sum(t.numel() * t.element_size() for t in state.values())
    print(f"{name}: {sum(t.numel() for t in state.values()) / 1e6:.1f}M parameters, {num_bytes / 1e6:.1f} MB",
          flush=True)
    # no generation here: a small KV cache and context keep the engine's footprint down
    worker = RolloutWorker(model, "float32", RolloutConfig(max_model_len=512, kv_cache_gb=0.25), seed=0)
    sender, receiver = ShmSender(f"{shm}/{name}"), ShmReceiver()
    runs: list[dict[str, float]] = []
    try:
        worker.load_weights(sender.publish(1, state))  # untimed warm-up: first-call costs on both sides
        for rep in range(args.repeats):
            version = rep + 2
            handle, publish = timed(sender.publish, version, state)
            loaded, load = timed(worker.load_weights, handle)
            assert loaded == version, (loaded, version)
            _, hash_s = timed(receiver.fetch, handle)
            run = {"publish": publish, "load": load, "total": publish + load, "hash": hash_s,
                   "write": publish - hash_s, "reload": load - hash_s, "memcpy": memcpy(state, dst),
                   "shm_write": shm_write(state, Path(shm) / "raw.bin")}
            runs.append(run)
            print(f"  rep {rep}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in run.items()), flush=True)
    finally:
        worker.close()
        sender.close()
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return {"bytes": num_bytes, "file_bytes": handle.num_bytes, **med}


def report(results: dict[str, dict], args) -> None:
    ms = lambda s: f"{s * 1e3:.1f}"  # noqa: E731
    print(f"\nB3 — weight push through /dev/shm, medians of {args.repeats} (after one warm-up push); memcpy = "
          f"dst.copy_(src) of every tensor into preallocated tensors, 1 torch thread\n")
    print("| model | MB (fp32) | publish (ms) | verify+reload (ms) | total (ms) | memcpy (ms) | total / memcpy |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['bytes'] / 1e6:.1f} | {ms(r['publish'])} | {ms(r['load'])} | {ms(r['total'])} | "
              f"{ms(r['memcpy'])} | {r['total'] / r['memcpy']:.0f}x |")
    print("\nBreakdown (ms): write = publish - hash; hash = one XXH3-128 pass (done twice per push: sender and "
          "receiver); reload = load_weights - verify; raw /dev/shm write of the same bytes for reference\n")
    print("| model | safetensors MB | write | hash (x2 per push) | reload | raw /dev/shm write | hash MB/s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['file_bytes'] / 1e6:.1f} | {ms(r['write'])} | {ms(r['hash'])} | {ms(r['reload'])} | "
              f"{ms(r['shm_write'])} | {r['file_bytes'] / 1e6 / r['hash']:.0f} |")


def machine() -> str:
    import vllm

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}; torch "
            f"{torch.__version__}, vllm {vllm.__version__}")


def parse_args(doc: str) -> argparse.Namespace:
    """The B3 scripts' arguments; prints the machine and the command first."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="tiny,large", help=f"comma-separated, from {','.join(SIZES)}")
    args = parser.parse_args()
    print(machine(), flush=True)
    print(f"command: python {' '.join(sys.argv)}", flush=True)
    return args


def main() -> None:
    args = parse_args(__doc__)
    torch.set_num_threads(1)  # the memcpy baseline and the sender (save + hash) are single-threaded alike
    # a `timeout` or kill must still reach the `finally`s: engine processes stopped, /dev/shm cleaned
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = {}
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        for name in args.sizes.split(","):
            results[name] = bench_size(name, args, tmp, shm)
    report(results, args)


if __name__ == "__main__":
    main()
