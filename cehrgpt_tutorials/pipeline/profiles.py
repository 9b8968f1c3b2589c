"""Step 4's training profiles: model size and optimisation, as cehrgpt's pretraining runner reads them.

train_cehrgpt.sh --profile NAME puts `runner_arguments(PROFILES[NAME])` on the runner's command line,
before the user's own runner arguments (so theirs win). Why these values: bench/RESULTS.md.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingProfile:
    """One profile. A field left None is not passed: the runner's own default applies."""

    summary: str  # what it is for, as --help says it (a newline where its help line wraps)
    hidden_size: int  # divisible by 3 (the time-token head splits the hidden state in three) and by n_head
    num_hidden_layers: int
    n_head: int
    max_position_embeddings: int  # the context, in tokens
    per_device_batch_size: int  # train and eval; per process under --nproc
    learning_rate: float
    num_train_epochs: int
    warmup_ratio: float = 0.05
    backbone: str | None = None  # qwen2 knows token order (cehrgpt's gpt2 block has no position embeddings)
    use_qk_norm: bool | None = None  # normalise queries and keys (with the qwen2 block)
    dropout: float | None = None  # residual, embedding and attention dropout alike
    max_steps: int | None = None  # stop after this many optimiser steps, whatever the epochs
    # The runner always stops early (patience 1) once an epoch improves the eval loss by less than this
    # share (its default: 1%). 0: stop only when the loss gets worse; load_best_model_at_end keeps the
    # best epoch either way.
    early_stopping_threshold: float | None = None
    # Sequences packed into batches of at most this many tokens (the runner then sets the per-device
    # batch to 1 itself): no padding, and long and short patients share a batch.
    max_tokens_per_batch: int | None = None


PROFILES = {
    # The seed's width and context with 6 layers instead of 4 and the qwen2 block with QK-norm, no
    # dropout, batch 8 and a higher learning rate: chosen on the full demo (bench/RESULTS.md).
    "demo": TrainingProfile(
        summary="trains a usable model on the 2-core CPU demo in minutes",
        backbone="qwen2", use_qk_norm=True, hidden_size=192, num_hidden_layers=6, n_head=4,
        max_position_embeddings=512, dropout=0.0, per_device_batch_size=8, learning_rate=2e-3,
        num_train_epochs=6, early_stopping_threshold=0.0),
    # The seed's architecture. Its own optimiser settings (the runner's 5e-5 for 3 epochs) leave the
    # model unable to write a valid patient (0% on the demo); 1e-3 for 8 epochs trains it.
    "seed": TrainingProfile(
        summary="the seed tutorial's architecture (hidden 192, 4 layers, 4 heads,\n"
                "context 512) with a learning rate that trains it; for a GPU or a long run",
        hidden_size=192, num_hidden_layers=4, n_head=4, max_position_embeddings=512, per_device_batch_size=16,
        learning_rate=1e-3, num_train_epochs=8, early_stopping_threshold=0.0),
    # For the tests and a quick look at the whole chain: about a minute on 300 patients, and good
    # enough that some of its sequences convert to OMOP.
    "tiny": TrainingProfile(
        summary="150 steps of a very small model, for the tests",
        backbone="qwen2", use_qk_norm=True, hidden_size=48, num_hidden_layers=2, n_head=2,
        max_position_embeddings=512, dropout=0.0, per_device_batch_size=8, learning_rate=3e-3,
        num_train_epochs=10, max_steps=150),
    # The official CEHR-GPT tutorial's recipe, for a GPU and a CDM of 100,000 patients or more: 768 wide,
    # 12 layers and heads, context 1024, sample packing at 8,192 tokens, lr 1e-4, the runner's early
    # stopping (patience 1, 1%). On 2 CPU cores one step takes tens of seconds: not for the demo.
    "official": TrainingProfile(
        summary="the official tutorial's recipe (hidden 768, 12 layers and heads, context\n"
                "1024, sample packing at 8,192 tokens, lr 1e-4); for a GPU and a large CDM",
        hidden_size=768, num_hidden_layers=12, n_head=12, max_position_embeddings=1024, per_device_batch_size=1,
        learning_rate=1e-4, num_train_epochs=10, max_tokens_per_batch=8192),
}


def runner_word(value: bool | int | float | str) -> str:
    """A value as the runner's command line writes it: true, 0 (not 0.0), 2e-3 (not 0.002), 0.05.

    The words are part of the run stamp (run_stamp.py), so they must not change from one release to
    the next: a run started with `--learning_rate 2e-3` resumes only under the same words.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if 0 < abs(value) < 1e-2:
            mantissa, exponent = f"{value:e}".split("e")
            return f"{float(mantissa):g}e{int(exponent)}"
        return f"{value:g}"
    return str(value)


def runner_arguments(profile: TrainingProfile) -> list[str]:
    """The profile as runner arguments, in the order train_cehrgpt.sh has always passed them."""
    options: list[tuple[str, object]] = [
        ("--backbone", profile.backbone), ("--use_qk_norm", profile.use_qk_norm),
        ("--hidden_size", profile.hidden_size), ("--num_hidden_layers", profile.num_hidden_layers),
        ("--n_head", profile.n_head), ("--max_position_embeddings", profile.max_position_embeddings),
        ("--resid_pdrop", profile.dropout), ("--embd_pdrop", profile.dropout), ("--attn_pdrop", profile.dropout),
        ("--per_device_train_batch_size", profile.per_device_batch_size),
        ("--per_device_eval_batch_size", profile.per_device_batch_size),
        ("--learning_rate", profile.learning_rate), ("--warmup_ratio", profile.warmup_ratio),
        ("--num_train_epochs", profile.num_train_epochs), ("--max_steps", profile.max_steps),
        ("--early_stopping_threshold", profile.early_stopping_threshold),
        ("--sample_packing", True if profile.max_tokens_per_batch else None),
        ("--max_tokens_per_batch", profile.max_tokens_per_batch),
    ]
    return [word for option, value in options if value is not None for word in (option, runner_word(value))]
