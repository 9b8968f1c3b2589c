"""Benchmark for step 4: the cehrgpt runner's training tokens/s next to a plain GPT-2 of the same size.

Goal: the runner reaches at least 25% of the tokens/s of a plain transformers
GPT2LMHeadModel with the profile's size (seed: hidden 192, 4 layers, 4 heads, context 512), trained
on random tokens with the same batch size on the same device, in the same run — so that data
loading, collation and CEHR-GPT's extra heads do not starve the accelerator.

How the runner is measured: the exact command train_cehrgpt.sh builds for the profile (it prints it
with --print-args) is run in this process through cehrgpt.runners.hf_cehrgpt_pretrain_runner.main,
with evaluation and checkpointing turned off and --max_steps STEPS. The runner's Trainer is swapped
for a subclass that timestamps every optimisation step (after a CUDA synchronise) and counts the
tokens of each batch, so the rate includes waiting for the data loader. The first WARMUP steps
are left out of both rates. "real" tokens are the non-padding ones; "padded" counts the whole batch
tensor, which is what the GPU computes on.

Reads:  patient sequences (default $CEHR_GPT_DATA_DIR/patient_sequence, e.g. the demo's)
Writes: a temporary model folder (deleted), the numbers on stdout; --json FILE writes them too.

Examples:
    python bench/train_bench.py --profile seed --steps 12                # CPU, a few minutes
    python bench/train_bench.py --profile seed --steps 200 --json bench/out/train_bench_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
TRAIN_SCRIPT = REPO_ROOT / "cehrgpt_tutorials" / "scripts" / "train_cehrgpt.sh"


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def steady_rate(step_times: list[float], step_tokens: list[int], warmup: int) -> float:
    """Tokens per second over the steps after `warmup` (step_times[i] = end of step i)."""
    if len(step_times) <= warmup + 1:
        raise SystemExit(f"error: only {len(step_times)} steps ran; use --steps larger than --warmup + 1")
    seconds = step_times[-1] - step_times[warmup]
    return sum(step_tokens[warmup + 1:]) / seconds


def runner_command(profile: str, data_folder: Path, model_dir: Path, steps: int, batch_size: int,
                   extra: list[str]) -> list[str]:
    """train_cehrgpt.sh's runner arguments for the profile, with benchmark overrides appended (last wins)."""
    overrides = [
        "--max_steps", str(steps), "--per_device_train_batch_size", str(batch_size),
        "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
        # The runner's early-stopping callback needs evaluation; there is none here.
        "--use_early_stopping", "false", "--logging_steps", str(max(steps, 1)),
    ]
    printed = subprocess.run(
        ["sh", str(TRAIN_SCRIPT), "--profile", profile, "--data-folder", str(data_folder),
         "--model-dir", str(model_dir), "--print-args", *overrides, *extra],
        capture_output=True, text=True, env={**os.environ, "USE_TF": "0"},
    )
    if printed.returncode != 0:
        raise SystemExit(printed.stderr.strip() or "error: train_cehrgpt.sh --print-args failed")
    words = printed.stdout.splitlines()
    module_index = words.index("cehrgpt.runners.hf_cehrgpt_pretrain_runner")
    return words[module_index + 1:]


def measure_runner(arguments: list[str], warmup: int) -> dict:
    """Run the real runner in this process and time its optimisation steps."""
    import cehrgpt.runners.hf_cehrgpt_pretrain_runner as runner
    import transformers

    step_times: list[float] = []
    real_tokens: list[int] = []
    padded_tokens: list[int] = []

    class TimedTrainer(transformers.Trainer):
        def training_step(self, model, inputs):
            mask = inputs.get("attention_mask")
            padded_tokens.append(int(inputs["input_ids"].numel()))
            real_tokens.append(int(mask.sum()) if mask is not None else padded_tokens[-1])
            loss = super().training_step(model, inputs)
            synchronize()
            step_times.append(time.perf_counter())
            return loss

    # The runner looks up `Trainer` in its own module when it builds the trainer.
    runner.Trainer = TimedTrainer
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    sys.argv = ["hf_cehrgpt_pretrain_runner", *arguments]
    started = time.perf_counter()
    runner.main()
    wall = time.perf_counter() - started
    return {
        "real_tokens_per_s": steady_rate(step_times, real_tokens, warmup),
        "padded_tokens_per_s": steady_rate(step_times, padded_tokens, warmup),
        "mean_real_tokens_per_batch": sum(real_tokens) / len(real_tokens),
        "mean_padded_tokens_per_batch": sum(padded_tokens) / len(padded_tokens),
        "steps": len(step_times),
        "wall_s_including_tokenization": wall,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }


def measure_plain_gpt2(hidden: int, layers: int, heads: int, context: int, batch_size: int, vocab_size: int,
                       steps: int, warmup: int, learning_rate: float) -> dict:
    """The baseline: transformers' GPT2LMHeadModel of the same size on random tokens, plain AdamW loop."""
    from transformers import GPT2Config, GPT2LMHeadModel

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab_size, n_positions=context, n_embd=hidden, n_layer=layers, n_head=heads)
    model = GPT2LMHeadModel(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    step_times = []
    tokens = []
    for _ in range(steps):
        batch = torch.randint(0, vocab_size, (batch_size, context), device=device)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize()
        step_times.append(time.perf_counter())
        tokens.append(batch.numel())
    return {
        "tokens_per_s": steady_rate(step_times, tokens, warmup),
        "steps": steps,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }


def argument_value(arguments: list[str], name: str) -> str:
    """The last value given for a runner option (later ones win, as in argparse)."""
    positions = [i for i, word in enumerate(arguments) if word == name]
    if not positions:
        raise SystemExit(f"error: the runner command has no {name}")
    return arguments[positions[-1] + 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="seed", help="train_cehrgpt.sh profile (default seed)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimisation steps per model (default: 200 on a GPU, 12 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="steps left out of the rates (default steps // 4)")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per step for both models (default 32)")
    parser.add_argument("--data-folder", type=Path, default=None,
                        help="patient sequences (default $CEHR_GPT_DATA_DIR/patient_sequence)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this file")
    parser.add_argument("runner_args", nargs="*", help="extra runner arguments after --, e.g. -- --group_by_length true")
    arguments = parser.parse_args()
    if os.environ.get("USE_TF") != "0":
        raise SystemExit("error: USE_TF is not 0 (transformers would import Keras 3 and fail): source setup_env.sh")

    on_gpu = torch.cuda.is_available()
    steps = arguments.steps or (200 if on_gpu else 12)
    warmup = arguments.warmup if arguments.warmup is not None else max(steps // 4, 2)
    data_folder = arguments.data_folder or Path(os.environ.get("CEHR_GPT_DATA_DIR") or "omop_synthea") / "patient_sequence"
    if not data_folder.is_dir():
        raise SystemExit(f"error: no patient sequences at {data_folder} (run the demo's first steps, or --data-folder)")
    device = torch.cuda.get_device_name(0) if on_gpu else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"

    work = Path(tempfile.mkdtemp(prefix="train_bench_"))
    try:
        command = runner_command(arguments.profile, data_folder, work / "model", steps, arguments.batch_size,
                                 arguments.runner_args)
        print(f"device: {device}\nrunner: {' '.join(command)}", flush=True)
        runner = measure_runner(command, warmup)
        from cehrgpt.models.tokenization_hf_cehrgpt import CehrGptTokenizer

        vocab_size = CehrGptTokenizer.from_pretrained(str(work / "model")).vocab_size
        learning_rate = float(argument_value(command, "--learning_rate"))
        plain = measure_plain_gpt2(
            hidden=int(argument_value(command, "--hidden_size")),
            layers=int(argument_value(command, "--num_hidden_layers")),
            heads=int(argument_value(command, "--n_head")),
            context=int(argument_value(command, "--max_position_embeddings")),
            batch_size=arguments.batch_size, vocab_size=vocab_size, steps=steps, warmup=warmup,
            learning_rate=learning_rate,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ratio_real = runner["real_tokens_per_s"] / plain["tokens_per_s"]
    ratio_padded = runner["padded_tokens_per_s"] / plain["tokens_per_s"]
    print(f"\nprofile {arguments.profile}, batch {arguments.batch_size}, {steps} steps ({warmup} warm-up steps left out), {device}")
    print(f"  plain GPT-2 (random tokens, full {argument_value(command, '--max_position_embeddings')}-token rows): "
          f"{plain['tokens_per_s']:10,.0f} tokens/s")
    print(f"  cehrgpt runner, real tokens:   {runner['real_tokens_per_s']:10,.0f} tokens/s   "
          f"ratio {ratio_real:.2f}  (goal >= 0.25)")
    print(f"  cehrgpt runner, padded tokens: {runner['padded_tokens_per_s']:10,.0f} tokens/s   ratio {ratio_padded:.2f}")
    print(f"  runner batches: {runner['mean_real_tokens_per_batch']:.0f} real of "
          f"{runner['mean_padded_tokens_per_batch']:.0f} padded tokens on average")
    print(f"  runner wall time incl. tokenizer training and tokenization: {runner['wall_s_including_tokenization']:.0f} s")
    if on_gpu:
        print(f"  peak GPU memory: runner {runner['peak_gpu_memory_gib']:.2f} GiB, "
              f"plain GPT-2 {plain['peak_gpu_memory_gib']:.2f} GiB")
    if arguments.json:
        arguments.json.parent.mkdir(parents=True, exist_ok=True)
        arguments.json.write_text(json.dumps({
            "profile": arguments.profile, "device": device, "batch_size": arguments.batch_size, "steps": steps,
            "warmup": warmup, "runner": runner, "plain_gpt2": plain,
            "ratio_real": ratio_real, "ratio_padded": ratio_padded, "runner_command": command,
        }, indent=2))


if __name__ == "__main__":
    main()
