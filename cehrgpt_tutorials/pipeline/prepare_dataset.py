"""Step 4, before the first training step: the runner's tokenization, faster, with the same result.

The rule: run cehrgpt's pre-training runner's own steps (its functions, the package's tokenization
mapping, the same order and seed) and change only how they are called: the tokenizer's answers are
cached per distinct token (CachedTokenizer) and the mapping's output reaches `datasets` as whole Arrow
columns (ArrowBatchMapping). Why: per patient, the runner spends most of its time outside cehrgpt's own
logic (measurements: bench/RESULTS.md, "the tokenization done first"). The result is saved where the
runner looks for it, so the runner loads it; tests/test_prepare_dataset.py checks it equals the runner's
own. Runner arguments this module does not handle (streaming, MEDS, a split file, ...) are left to it.

    python -m cehrgpt_tutorials.pipeline.prepare_dataset --runner-command python -m \\
        cehrgpt.runners.hf_cehrgpt_pretrain_runner --data_folder omop_synthea/patient_sequence/train ...
"""

from __future__ import annotations

import itertools
import os
import sys
import time

from cehrgpt_tutorials.files import atomic_directory

RUNNER_MODULE = "cehrgpt.runners.hf_cehrgpt_pretrain_runner"
# Columns datasets writes with a smaller integer type when it infers them itself (datasets'
# OptimizedTypedSequence); kept here so the fast path chooses the same types.
OPTIMIZED_INT_COLUMNS = {"attention_mask": "int8", "special_tokens_mask": "int8", "input_ids": "int32",
                         "token_type_ids": "int8"}


# ---------------------------------------------------------------------------------------------
# The conversion: a batch's lists of arrays or lists -> one Arrow list array per column.
# ---------------------------------------------------------------------------------------------

# Value types the flat conversion of Python lists may end with: those pyarrow infers the same way
# for the whole column at once as for nested lists after datasets' cast_to_python_objects.
PYTHON_LIST_VALUE_TYPES = ("int64", "double", "string", "bool")


def _list_array(values: list):
    """One Arrow ListArray for a column of 1-D numpy arrays or of Python lists (None: a null list),
    or None when this fast path cannot build it exactly as datasets would (then datasets does).

    datasets converts a column of numpy arrays one array at a time and concatenates the results
    (list_of_np_array_to_pyarrow_listarray), and a column of lists by walking every value in Python
    (cast_to_python_objects) before pyarrow sees it. Converting all values in one go gives the same
    values and type when the arrays share one dtype (object arrays: strings only), or when the
    lists' values are plain ints, floats, strings or booleans.
    """
    import numpy as np
    import pyarrow as pa

    present = [value for value in values if value is not None]
    if not present:
        return None
    if all(isinstance(value, np.ndarray) and value.ndim == 1 for value in present):
        dtype = present[0].dtype
        if any(array.dtype != dtype for array in present):
            return None
        if dtype.kind == "O" and any(len(array) == 0 for array in present):
            return None  # an empty object array is Arrow's null type on its own
        flat = pa.array(np.concatenate(present)) if len(present) > 1 else pa.array(present[0])
        if dtype.kind == "O" and not (pa.types.is_string(flat.type) and flat.null_count == 0):
            return None  # mixed or missing values: per-array inference could differ
    elif all(type(value) is list for value in present):
        try:
            flat = pa.array(list(itertools.chain.from_iterable(present)))
        except (pa.lib.ArrowException, TypeError, OverflowError):
            return None
        if str(flat.type) not in PYTHON_LIST_VALUE_TYPES:
            return None
    else:
        return None
    lengths = np.fromiter((0 if value is None else len(value) for value in values), dtype=np.int64,
                          count=len(values))
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] >= 2**31:
        return None  # past int32 offsets: datasets reports that itself
    missing = np.fromiter((value is None for value in values), dtype=bool, count=len(values))
    mask = np.concatenate([missing, [False]]) if missing.any() else None
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32), type=pa.int32(), mask=mask), flat)


def arrow_columns(batch: dict, input_features) -> dict:
    """The mapping's output batch as one Arrow array per column, of the type `datasets` gives it.

    datasets' ArrowWriter converts each column with OptimizedTypedSequence: it tries the input
    column's type when the column came in, else infers one (with smaller integers for the columns it
    optimises). Columns of 1-D numpy arrays are built in one go here and then given that same type;
    the others go through datasets' own OptimizedTypedSequence.
    """
    import pyarrow as pa
    from datasets.arrow_writer import OptimizedTypedSequence
    from datasets.features import Value
    from datasets.table import array_cast

    converted = {}
    for name, values in batch.items():
        try_type = input_features[name] if input_features is not None and name in input_features else None
        array = _list_array(values) if isinstance(values, list) and values else None
        if array is None:
            array = pa.array(OptimizedTypedSequence(values, try_type=try_type, col=name))
        elif try_type is not None:
            array = _input_type_if_it_fits(array, try_type)
        elif name in OPTIMIZED_INT_COLUMNS and pa.types.is_int64(array.type.value_type):
            array = array_cast(array, pa.list_(Value(OPTIMIZED_INT_COLUMNS[name])()))
        converted[name] = array
    return converted


def _input_type_if_it_fits(array, feature):
    """`array` cast to the input column's type, as datasets tries first; unchanged when that fails."""
    import pyarrow as pa
    from datasets.table import cast_array_to_feature

    try:
        return cast_array_to_feature(array, feature, allow_primitive_to_str=False, allow_decimal_to_str=False)
    except (TypeError, pa.lib.ArrowInvalid, pa.lib.ArrowNotImplementedError):
        return array  # datasets keeps the inferred type when the input's does not fit


class CachedTokenizer:
    """The CehrGptTokenizer as the mapping sees it, with two lookups it repeats for every patient cached.

    The mapping asks for the whole vocabulary (a new dict of every token) once per patient, and
    encodes each patient's tokens through the `tokenizers` library, ~0.15 ms a call. Here the
    vocabulary is read once, and each distinct token's ids are asked of the same tokenizer once and
    remembered. Encoding a pre-split list is encoding its words one by one and joining the ids when
    the tokenizer has no post-processor, truncation or padding (nothing that looks across words);
    for a tokenizer with any of them every call goes to the tokenizer as before.
    Everything else is the tokenizer's own.
    """

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._vocabulary = tokenizer.get_vocab()
        self._ids_by_token = {}
        self._ids_by_value = {}

    def __getattr__(self, name):  # only for names not found on this object
        tokenizer = self.__dict__.get("_tokenizer")
        if tokenizer is None:  # while unpickling in a worker process, before __dict__ is back
            raise AttributeError(name)
        return getattr(tokenizer, name)

    def get_vocab(self) -> dict:
        return self._vocabulary

    def encode(self, concept_ids, **kwargs) -> list[int]:
        return self._encode(self._tokenizer._tokenizer, self._ids_by_token, concept_ids)

    def encode_value(self, concept_values) -> list[int]:
        return self._encode(self._tokenizer._value_tokenizer, self._ids_by_value, concept_values)

    @staticmethod
    def _encode(tokenizer, cache: dict, words) -> list[int]:
        if tokenizer.post_processor is not None or tokenizer.truncation or tokenizer.padding:
            return tokenizer.encode(words, is_pretokenized=True).ids
        ids = []
        for word in words:
            found = cache.get(word)
            if found is None:
                found = cache[word] = tokenizer.encode([word], is_pretokenized=True).ids
            ids.extend(found)
        return ids


class ArrowBatchMapping:
    """The package's mapping (its batch_transform, untouched), its output handed over as an Arrow table.

    A map function that returns a dict may only hold lists and numpy arrays, which `datasets` then
    converts patient by patient; a table is written as it is. Its columns are what `datasets` would
    have written: the input's columns in their order, replaced by the mapping's where it returns
    them, then the mapping's new ones.
    """

    def __init__(self, mapping, input_features):
        self.mapping = mapping
        self.input_features = input_features

    def __call__(self, batch):
        import pyarrow as pa
        from datasets.formatting.formatting import LazyBatch

        if not isinstance(batch, LazyBatch):
            raise TypeError(f"expected datasets' LazyBatch (an unformatted dataset), got {type(batch).__name__}")
        converted = arrow_columns(self.mapping.batch_transform(batch), self.input_features)
        # Input columns the mapping did not return are kept as they came in (only those are read here).
        columns = {name: converted.pop(name) if name in converted else batch.pa_table.column(name).combine_chunks()
                   for name in batch.pa_table.column_names}
        columns.update(converted)
        return pa.Table.from_arrays(list(columns.values()), names=list(columns))


# ---------------------------------------------------------------------------------------------
# The runner's steps up to its saved, tokenized dataset.
# ---------------------------------------------------------------------------------------------

# Options that set up distributed training: this one process is not part of torchrun's group, and
# the Trainer's arguments would try to join it (--ddp_backend gloo: "Default process group has not
# been initialized"). Tokenizing does not depend on them.
DISTRIBUTED_OPTIONS = ("--ddp_backend", "--local_rank", "--local-rank")


def runner_arguments(argv: list[str]) -> list[str]:
    """The words after the runner's module name in a full runner command, less DISTRIBUTED_OPTIONS."""
    if RUNNER_MODULE not in argv:
        raise SystemExit(f"error: --runner-command must contain '-m {RUNNER_MODULE}' followed by its arguments")
    words, kept = argv[argv.index(RUNNER_MODULE) + 1:], []
    skip_value = False
    for word in words:
        if skip_value:
            skip_value = False
        elif word in DISTRIBUTED_OPTIONS:
            skip_value = True
        elif not word.startswith(tuple(f"{option}=" for option in DISTRIBUTED_OPTIONS)):
            kept.append(word)
    return kept


def unsupported(cehrgpt_args, data_args) -> str | None:
    """Why this module leaves the tokenization to the runner, or None when it does it."""
    if data_args.streaming:
        return "--streaming"
    if data_args.is_data_in_meds:
        return "--is_data_in_meds (MEDS input)"
    if cehrgpt_args.tokenized_dataset_name:
        return "--tokenized_dataset_name"
    if cehrgpt_args.expand_tokenizer:
        return "--expand_tokenizer"
    if cehrgpt_args.patient_splits_path:
        return "--patient_splits_path"
    if not data_args.validation_split_percentage:
        return "no --validation_split_percentage"
    return None


def prepare(words: list[str]) -> str:
    """Tokenize as the runner would; returns a line saying what happened."""
    from cehrbert.runners.runner_util import generate_prepared_ds_path, load_parquet_as_dataset
    from cehrgpt.data.hf_cehrgpt_dataset import CEHRGPT_COLUMNS, TRANSFORMER_COLUMNS
    from cehrgpt.data.hf_cehrgpt_dataset_mapping import HFCehrGptTokenizationMapping
    from cehrgpt.runners.gpt_runner_util import parse_runner_args
    from cehrgpt.runners.hf_cehrgpt_pretrain_runner import load_and_create_tokenizer
    from datasets import DatasetDict

    sys.argv = [RUNNER_MODULE, *words]  # the runner's own parser reads sys.argv
    cehrgpt_args, data_args, model_args, training_args = parse_runner_args()
    reason = unsupported(cehrgpt_args, data_args)
    if reason:
        return f"the runner tokenizes itself ({reason} is not done here)"
    data_folder = os.path.expanduser(data_args.data_folder)
    if os.path.exists(os.path.join(data_folder, "dataset_dict.json")):
        return f"the runner loads the tokenized dataset in {data_folder}"
    prepared = generate_prepared_ds_path(data_args, model_args)
    if any(prepared.glob("*")):
        return f"already tokenized: {prepared} (the runner loads it)"

    started = time.monotonic()
    # As the runner does (its main(), non-streaming Parquet input with a percentage split).
    dataset = load_parquet_as_dataset(data_folder, split="train", streaming=False)
    dataset = dataset.train_test_split(test_size=data_args.validation_split_percentage, seed=training_args.seed)
    dataset = DatasetDict({"train": dataset["train"], "validation": dataset["test"]})
    tokenizer = load_and_create_tokenizer(data_args=data_args, model_args=model_args, cehrgpt_args=cehrgpt_args,
                                          dataset=dataset)
    if "visit_concept_ids" in dataset["train"].column_names:  # the runner drops it (mixed types)
        dataset = dataset.remove_columns(["visit_concept_ids"])
    mapping = HFCehrGptTokenizationMapping(CachedTokenizer(tokenizer))
    dataset = dataset.map(ArrowBatchMapping(mapping, dataset["train"].features),
                          num_proc=data_args.preprocessing_num_workers, batched=True,
                          batch_size=data_args.preprocessing_batch_size)
    if mapping.remove_columns():
        dataset = dataset.remove_columns(mapping.remove_columns())
    required = TRANSFORMER_COLUMNS + CEHRGPT_COLUMNS
    dataset = dataset.remove_columns([name for name in dataset["train"].column_names if name not in required])

    # Saved beside its final place and renamed when complete: a half-written folder there would
    # make the runner fail to load it instead of tokenizing again.
    with atomic_directory(prepared) as temporary:
        dataset.save_to_disk(str(temporary))
    dataset.cleanup_cache_files()
    sequences = sum(len(split) for split in dataset.values())
    seconds = time.monotonic() - started
    return (f"tokenized {sequences:,} sequences in {seconds:.0f} s ({sequences / max(seconds, 1e-9):,.0f}/s, "
            f"{data_args.preprocessing_num_workers or 1} workers) into {prepared}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    if argv[0] != "--runner-command":
        raise SystemExit("error: usage: python -m cehrgpt_tutorials.pipeline.prepare_dataset --runner-command "
                         f"<the runner command: ... -m {RUNNER_MODULE} ARGS> (see --help)")
    words = runner_arguments(argv[1:])
    os.environ.setdefault("USE_TF", "0")
    print(f"prepare_dataset: {prepare(words)}", flush=True)


if __name__ == "__main__":
    main()
