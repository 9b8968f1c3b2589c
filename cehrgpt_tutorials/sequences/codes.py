"""Reading patient sequences (cehrbert_data's patient_sequence, cehrgpt's generated_sequences) as
one flat int32 code array of a shared Vocabulary plus row offsets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.sequences.tokens import SEQUENCE_TOKEN_COLUMN, check_patient_sequence_schema
from cehrgpt_tutorials.sequences.vocabulary import Vocabulary


@dataclass
class Sequences:
    """Many token sequences, flat: sequence i is codes[offsets[i]:offsets[i + 1]]."""

    codes: np.ndarray
    offsets: np.ndarray
    person_ids: np.ndarray | None = None

    @property
    def count(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def tokens(self, index: int, vocabulary: Vocabulary) -> list[str]:
        return [vocabulary.tokens[code] for code in self.codes[self.offsets[index] : self.offsets[index + 1]]]


def sequences_from_lists(token_lists: list[list[str]], vocabulary: Vocabulary) -> Sequences:
    """Sequences from Python lists of tokens (tests, small data)."""
    lengths = np.array([len(tokens) for tokens in token_lists], dtype=np.int64)
    codes = vocabulary.codes([token for tokens in token_lists for token in tokens])
    return _without_start_tokens(
        Sequences(codes, np.concatenate(([0], np.cumsum(lengths))), None), vocabulary
    )


def _token_leaf_path(parquet_file: pq.ParquetFile) -> str | None:
    for index in range(len(parquet_file.schema)):
        path = parquet_file.schema.column(index).path
        if path.startswith(SEQUENCE_TOKEN_COLUMN + "."):
            return path
    return None


def read_sequences(files: list[Path], vocabulary: Vocabulary, description: str) -> Sequences:
    """concept_ids (and person_id when present) of every file, in file order, as codes of `vocabulary`."""
    code_chunks, length_chunks, person_chunks = [], [], []
    for path in tqdm(
        files, desc=description, unit="file", leave=False, disable=True if len(files) < 5 else None
    ):
        try:
            parquet_file = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as error:
            raise PipelineError(f"cannot read {path} as Parquet: {error}") from None
        schema = parquet_file.schema_arrow
        check_patient_sequence_schema(schema, path)
        columns = [SEQUENCE_TOKEN_COLUMN] + (["person_id"] if "person_id" in schema.names else [])
        leaf = _token_leaf_path(parquet_file)
        # Spark writes concept_ids dictionary-encoded; reading it as a dictionary skips building
        # millions of Python-visible strings: we only map each file's few thousand distinct tokens.
        table = pq.read_table(path, columns=columns, read_dictionary=[leaf] if leaf else None)
        for chunk in table.column(SEQUENCE_TOKEN_COLUMN).chunks:
            lengths = pc.fill_null(pc.list_value_length(chunk), 0).to_numpy(zero_copy_only=False)
            values = pc.list_flatten(chunk)
            if not pa.types.is_dictionary(values.type) or values.null_count:
                values = pc.dictionary_encode(pc.fill_null(values.cast(pa.string()), ""))
            dictionary_codes = vocabulary.codes(values.dictionary.to_pylist())
            code_chunks.append(dictionary_codes[values.indices.to_numpy(zero_copy_only=False)])
            length_chunks.append(lengths.astype(np.int64))
        if "person_id" in columns:
            person_chunks.append(pc.fill_null(table.column("person_id"), -1).to_numpy())
    codes = np.concatenate(code_chunks) if code_chunks else np.empty(0, dtype=np.int32)
    lengths = np.concatenate(length_chunks) if length_chunks else np.empty(0, dtype=np.int64)
    persons = np.concatenate(person_chunks) if len(person_chunks) == len(files) and files else None
    sequences = Sequences(codes.astype(np.int32), np.concatenate(([0], np.cumsum(lengths))), persons)
    return _without_start_tokens(sequences, vocabulary)


def _without_start_tokens(sequences: Sequences, vocabulary: Vocabulary) -> Sequences:
    """Drop a leading [START] token, as cehrgpt's converter does, so the prompt starts at position 0."""
    code = vocabulary.code_of.get("[START]")
    lengths = sequences.lengths
    if code is None or not len(sequences.codes):
        return sequences
    non_empty = lengths > 0
    starts = sequences.offsets[:-1]
    leading = np.zeros(sequences.count, dtype=bool)
    leading[non_empty] = sequences.codes[starts[non_empty]] == code
    if not leading.any():
        return sequences
    keep = np.ones(len(sequences.codes), dtype=bool)
    keep[starts[leading]] = False
    lengths = lengths - leading
    return Sequences(sequences.codes[keep], np.concatenate(([0], np.cumsum(lengths))), sequences.person_ids)

