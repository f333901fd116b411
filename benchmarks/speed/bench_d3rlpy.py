"""Pretraining speed: dtrl's DecisionTransformer against d3rlpy 2.8's DecisionTransformer.

Both train the same size of model (4 layers, 4 heads, 512 embed, K = 20, SiLU, dropout 0.1, paper
Table 5) with the same batch size on the same random episodes, and we time N update steps of each
(data sampling excluded; numpy -> torch conversion included, as d3rlpy's ``update`` does it).

* apples to apples: both deterministic DT (tanh action, MSE) with AdamW (weight decay 1e-4,
  gradient-norm clip 0.5);
* dtrl as used in the paper: Gaussian head (NLL - temperature * entropy) with LAMB.

d3rlpy pins gymnasium 1.0, so it lives in its own venv (default .venv-d3rlpy in the working directory, made with
``python3 -m venv .venv-d3rlpy && .venv-d3rlpy/bin/pip install torch==2.13.0 d3rlpy==2.8.1``);
this script runs there as a worker (``--worker``) and imports nothing from dtrl in that mode.
Differences that remain: d3rlpy embeds states with a Linear+ReLU encoder (ours: one Linear) and
projects q, k, v with three Linears (ours: one fused Linear).

    python benchmarks/speed/bench_d3rlpy.py [--steps 5] [--batch 64] [--rounds 2] [--bf16] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

STATE_DIM, ACT_DIM, CONTEXT = 17, 6, 20
EPISODES, EPISODE_LENGTH = 40, 200
RESULTS = Path(__file__).resolve().parents[1] / "results" / "models.md"


def make_episodes(path: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n = EPISODES * EPISODE_LENGTH
    terminals = np.zeros(n, np.float32)
    terminals[EPISODE_LENGTH - 1::EPISODE_LENGTH] = 1.0
    np.savez(path, observations=rng.standard_normal((n, STATE_DIM)).astype(np.float32),
             actions=np.tanh(rng.standard_normal((n, ACT_DIM))).astype(np.float32),
             rewards=rng.standard_normal(n).astype(np.float32), terminals=terminals)


# ---- d3rlpy worker (runs in the d3rlpy venv) --------------------------------------------------


def d3rlpy_worker(data_path: str, steps: int, batch: int, threads: int) -> dict:
    import d3rlpy
    import torch
    from d3rlpy.algos import DecisionTransformerConfig
    from d3rlpy.models.encoders import VectorEncoderFactory
    from d3rlpy.optimizers import AdamWFactory

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = np.load(data_path)
    dataset = d3rlpy.dataset.MDPDataset(data["observations"], data["actions"], data["rewards"], data["terminals"])
    config = DecisionTransformerConfig(
        batch_size=batch, context_size=CONTEXT, num_heads=4, num_layers=4, max_timestep=1000,
        encoder_factory=VectorEncoderFactory(hidden_units=[512], activation="relu"),
        optim_factory=AdamWFactory(weight_decay=1e-4, clip_grad_norm=0.5),
        activation_type="swish", attn_dropout=0.1, resid_dropout=0.1, embed_dropout=0.1, learning_rate=1e-4,
    )
    algo = config.create(device="cpu:0")
    algo.build_with_dataset(dataset)
    n_params = sum(p.numel() for p in algo.impl.modules.transformer.parameters())
    batches = [dataset.sample_trajectory_batch(batch, length=CONTEXT) for _ in range(steps + 1)]
    algo.update(batches[0])  # warm-up
    times = []
    for b in batches[1:]:
        start = time.perf_counter()
        algo.update(b)
        times.append(time.perf_counter() - start)
    return {"times": times, "params": n_params, "version": d3rlpy.__version__, "torch": torch.__version__}


# ---- dtrl side ----------------------------------------------------------------------------------


def sample_windows(data, batch: int, rng) -> list[np.ndarray]:
    """Random K-step windows inside episodes (the same episodes d3rlpy samples from)."""
    starts = rng.integers(0, EPISODES, batch) * EPISODE_LENGTH + rng.integers(0, EPISODE_LENGTH - CONTEXT + 1, batch)
    index = starts[:, None] + np.arange(CONTEXT)
    rewards = data["rewards"].reshape(EPISODES, EPISODE_LENGTH)
    rtg = np.flip(np.cumsum(np.flip(rewards, 1), 1), 1).reshape(-1)
    return [data["observations"][index], data["actions"][index], rtg[index].astype(np.float32),
            (index % EPISODE_LENGTH).astype(np.int64), np.ones((batch, CONTEXT), bool)]


def dtrl_times(data_path: Path, steps: int, batch: int, policy: str, optimizer_name: str, bf16: bool = False) -> dict:
    import contextlib

    import torch

    from dtrl.config import ModelConfig
    from dtrl.models import DecisionTransformer
    from dtrl.optim import make_optimizer

    torch.manual_seed(0)
    data = np.load(data_path)
    config = ModelConfig(n_layer=4, n_head=4, embed_dim=512, context_length=CONTEXT, dropout=0.1,
                         activation="silu", policy=policy)
    model = DecisionTransformer(config, STATE_DIM, ACT_DIM).train()
    optimizer = make_optimizer(optimizer_name, model.policy_parameters(), lr=1e-4, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    batches = [sample_windows(data, batch, rng) for _ in range(steps + 1)]

    def update(arrays) -> None:
        tensors = [torch.as_tensor(a) for a in arrays]
        # bf16: matmuls in bfloat16 (weights, optimiser and log-likelihoods stay fp32/fp64)
        precision = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with precision:
            loss, _ = model.pretrain_loss(*tensors)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.policy_parameters(), 0.5)
        optimizer.step()

    update(batches[0])
    times = []
    for arrays in batches[1:]:
        start = time.perf_counter()
        update(arrays)
        times.append(time.perf_counter() - start)
    return {"times": times, "params": sum(p.numel() for p in model.parameters())}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed update steps per library")
    parser.add_argument("--batch", type=int, default=64, help="paper: 256; smaller keeps the run short")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of all implementations")
    parser.add_argument("--bf16", action="store_true", help="also time dtrl with bfloat16 autocast matmuls")
    parser.add_argument("--d3rlpy-python", default=".venv-d3rlpy/bin/python",
                        help="python of the d3rlpy venv, relative to the working directory (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", metavar="DATA", help=argparse.SUPPRESS)
    return parser.parse_args()


def run_d3rlpy(args: argparse.Namespace, data_path: Path) -> dict:
    """d3rlpy's update times from a worker in its own venv, or {"error": why not}."""
    if not Path(args.d3rlpy_python).exists():
        return {"error": f"{args.d3rlpy_python} does not exist (make the d3rlpy venv first, see the docstring)"}
    proc = subprocess.run(
        [args.d3rlpy_python, "-W", "ignore", __file__, "--worker", str(data_path), "--steps", str(args.steps),
         "--batch", str(args.batch), "--threads", str(args.threads)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "worker failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace, variants: list[tuple[str, str, str, bool]]) -> dict[str, dict]:
    """Update times of d3rlpy and of each dtrl variant by name, over ``args.rounds`` rounds.

    Rounds alternate the implementations, so a change in the machine's load during the run hits all
    of them; each is then rated by its fastest update (the one least disturbed by other jobs)."""
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "episodes.npz"
        make_episodes(data_path)
        for _ in range(args.rounds):
            d3 = run_d3rlpy(args, data_path)
            if "error" in d3:
                results["d3rlpy"] = d3
            else:
                previous = results.get("d3rlpy", {"times": []})
                results["d3rlpy"] = {**d3, "times": previous.get("times", []) + d3["times"]}
            for name, policy, optimizer_name, bf16 in variants:
                result = dtrl_times(data_path, args.steps, args.batch, policy, optimizer_name, bf16=bf16)
                result["times"] = results.get(name, {"times": []})["times"] + result["times"]
                results[name] = result
    return results


def rate(result: dict) -> float:
    return 1.0 / min(result["times"])


def median_rate(result: dict) -> float:
    return 1.0 / statistics.median(result["times"])


def results_lines(args: argparse.Namespace, variants: list[tuple[str, str, str, bool]],
                  results: dict[str, dict]) -> list[str]:
    """The markdown section of this run: the command, the setup, one row per implementation."""
    d3 = results["d3rlpy"]
    when = datetime.datetime.now(datetime.timezone.utc)
    load = os.getloadavg()[0]
    lines = [
        f"## {when:%Y-%m-%d %H:%M} UTC — `python benchmarks/speed/bench_d3rlpy.py --steps {args.steps} "
        f"--batch {args.batch} --rounds {args.rounds} --threads {args.threads}"
        + (" --bf16" if args.bf16 else "") + "`",
        "",
        f"(c) Pretraining update speed vs d3rlpy's DecisionTransformer: {os.cpu_count()}-core CPU, no GPU, shared "
        f"with other jobs (load average {load:.1f} at the end), {args.threads} torch thread(s), batch {args.batch}"
        + (" (paper: 256, reduced to keep the run short)" if args.batch < 256 else "")
        + f", K={CONTEXT}, 4 layers, 4 heads, 512 embed; {args.rounds} alternating rounds of {args.steps} timed "
        "updates (after one warm-up each); rated by the fastest update, median in brackets; noisy timings.",
        "",
        "| implementation | params | update steps/s best (median) | dtrl / d3rlpy best (median) |",
        "|---|---|---|---|",
    ]
    if "error" in d3:
        lines.append(f"| d3rlpy 2.8.1 | — | not measured: {d3['error']} | — |")
        base = None
    else:
        base = rate(d3)
        lines.append(f"| d3rlpy {d3['version']} DT (MSE, AdamW, torch {d3['torch']}) | {d3['params'] / 1e6:.2f} M | "
                     f"{base:.3f} ({median_rate(d3):.3f}) | 1.00 |")
    for name, *_ in variants:
        result = results[name]
        ratio = f"{rate(result) / base:.2f} ({median_rate(result) / median_rate(d3):.2f})" if base else "—"
        lines.append(f"| {name} | {result['params'] / 1e6:.2f} M | {rate(result):.3f} ({median_rate(result):.3f}) "
                     f"| {ratio} |")
    lines += ["", "Goal: dtrl >= 1.5x d3rlpy's update rate.", ""]
    return lines


def append_results(out: Path, lines: list[str]) -> None:
    """Append the section to ``out`` (made with its title when missing), written atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = out.read_text() if out.exists() else "# dtrl.models benchmarks\n\n"
    tmp_out = out.with_suffix(".md.tmp")
    tmp_out.write_text(previous.rstrip("\n") + "\n\n" + "\n".join(lines))
    os.replace(tmp_out, out)


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(d3rlpy_worker(args.worker, args.steps, args.batch, args.threads)))
        return

    import torch

    torch.set_num_threads(args.threads)
    variants = [("dtrl DT (MSE, AdamW)", "deterministic", "adamw", False),
                ("dtrl DT (Gaussian NLL+entropy, LAMB: paper setup)", "gaussian", "lamb", False)]
    if args.bf16:
        variants.append(("dtrl DT (paper setup) under torch.autocast bfloat16", "gaussian", "lamb", True))
    lines = results_lines(args, variants, measure(args, variants))
    print("\n".join(lines))
    append_results(args.out, lines)


if __name__ == "__main__":
    main()
