"""Classification sources whose real data ships inside packages on the index (see :mod:`kasa.assets`).

``vader``: VADER's human-rated sentiment sets (Hutto & Gilbert, ICWSM 2014; ``vaderSentiment==3.3.2``): each
snippet carries the mean of about 20 human ratings on -4..4, binned into classes with SST's cut points.
``sarcasm``: 28,614 news headlines labelled sarcastic or not (OpenAI evals' registry, ``evals==3.0.1.post1``).

Both ship one split, so train/validation come from a fixed stratified split whose ``split_seed`` is independent of
the run seed. ``path`` points a source at the same format elsewhere (the tests write tiny files in it).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from kasa import assets
from kasa.errors import DatasetError
from kasa.tasks.classification.data import Example, Splits, source, stratified_split

VADER_SETS = {"movie": "movieReviewSnippets", "tweets": "tweets", "nyt": "nytEditorialSnippets",
              "amazon": "amazonReviewSnippets"}
# SST's cut points on its [0, 1] sentiment value (0.2, 0.4, 0.6, 0.8), mapped onto VADER's -4..4 ratings by
# r = 8 v - 4. Three classes keep SST-3's (0.4, 0.6]; two drop that neutral band, as SST-2 does.
VADER_CLASSES = {
    5: ((-2.4, -0.8, 0.8, 2.4), ["very negative", "negative", "neutral", "positive", "very positive"]),
    3: ((-0.8, 0.8), ["negative", "neutral", "positive"]),
    2: ((-0.8, 0.8), ["negative", "positive"]),
}


def read_vader(file: str | Path) -> list[tuple[str, float]]:
    """``(text, mean rating)`` of a VADER ``*_GroundTruth.txt`` file (``id<TAB>mean<TAB>text`` lines), in order."""
    file = Path(file)
    if not file.exists():
        raise DatasetError(f"VADER ratings file {file} does not exist")
    rows = []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            rows.append((parts[2].strip(), float(parts[1])))
        except (IndexError, ValueError):
            raise DatasetError(f"{file}:{n}: expected 'id<TAB>mean rating<TAB>text', got {line[:60]!r}") from None
    return rows


def vader_label(rating: float, classes: int) -> int | None:
    """The class of a mean rating (None: the neutral band, dropped for two classes)."""
    cuts, _ = VADER_CLASSES[classes]
    k = sum(rating > c for c in cuts)
    if classes == 2:
        return None if k == 1 else k // 2
    return k


def normalise(text: str) -> str:
    """Lower-case letters and digits only: SST-2's tokenised sentences ("it 's ...") meet the raw snippets."""
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def _cap(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    if n is None or n >= len(examples):
        return examples
    if n <= 0:
        raise DatasetError(f"a cap of {n} examples leaves nothing; use a positive number or null")
    return random.Random(seed).sample(examples, n)


@source("vader")
def vader(subset: str = "movie", classes: int = 5, val_fraction: float = 0.2, split_seed: int = 0,
          max_train: int | None = None, max_validation: int | None = None, validation: str | None = None,
          path: str | None = None) -> Splits:
    """One of VADER's rated sets as classification.

    ``classes``: 5 (SST-5's bins), 3 (negative / neutral / positive) or 2 (the neutral band dropped). Duplicate
    texts are kept once. ``validation=sst2``: train on every binary snippet that is not an SST-2 dev sentence (the
    movie snippets hold 732 of its 872) and validate on the real SST-2 dev set (needs ``classes=2``). The caps
    take fixed subsets after the split (``split_seed``).
    """
    if subset not in VADER_SETS:
        raise DatasetError(f"dataset.source_args.subset='{subset}' is not a VADER set; use one of {sorted(VADER_SETS)}")
    if classes not in VADER_CLASSES:
        raise DatasetError(f"dataset.source_args.classes={classes} is not supported; use 5, 3 or 2")
    if validation not in (None, "sst2"):
        raise DatasetError(f"dataset.source_args.validation='{validation}' is unknown; use null or sst2")
    if validation == "sst2" and classes != 2:
        raise DatasetError("dataset.source_args.validation=sst2 scores SST-2's two classes: set classes=2")
    file = Path(path) if path else assets.vader_dir() / f"{VADER_SETS[subset]}_GroundTruth.txt"
    seen: set[str] = set()
    examples = []
    for text, rating in read_vader(file):
        label = vader_label(rating, classes)
        if label is None or text in seen:
            continue
        seen.add(text)
        examples.append(Example(text=text, label=label))
    label_names = VADER_CLASSES[classes][1]
    if validation == "sst2":
        from kasa.tasks.classification.glue import packaged_dev

        dev = packaged_dev("sst2")
        held = {normalise(e.text) for e in dev}
        train = [e for e in examples if normalise(e.text) not in held]
        random.Random(split_seed).shuffle(train)
        val = dev
    else:
        train, val = stratified_split(examples, val_fraction, split_seed)
    return Splits(train=_cap(train, max_train, split_seed), validation=_cap(val, max_validation, split_seed),
                  label_names=label_names)


@source("sarcasm")
def sarcasm(val_fraction: float = 0.2, split_seed: int = 0, max_train: int | None = None,
            max_validation: int | None = None, path: str | None = None) -> Splits:
    """Headlines labelled sarcastic (1) or not (0), from OpenAI evals' ``sarcasm/samples.jsonl`` (chat records
    whose user turn is the headline and whose ``ideal`` is the label). Duplicate headlines are kept once."""
    file = Path(path) if path else assets.sarcasm_file()
    if not file.exists():
        raise DatasetError(f"sarcasm samples file {file} does not exist")
    seen: set[str] = set()
    examples = []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            text = next(m["content"] for m in rec["input"] if m["role"] == "user").strip()
            label = int(rec["ideal"])
        except (ValueError, KeyError, StopIteration, TypeError):
            raise DatasetError(f"{file}:{n}: expected an evals record with a user turn and ideal 0/1") from None
        if label not in (0, 1):
            raise DatasetError(f"{file}:{n}: ideal={rec['ideal']!r}; expected 0 or 1")
        if text not in seen:
            seen.add(text)
            examples.append(Example(text=text, label=label))
    train, val = stratified_split(examples, val_fraction, split_seed)
    return Splits(train=_cap(train, max_train, split_seed), validation=_cap(val, max_validation, split_seed),
                  label_names=["not sarcastic", "sarcastic"])
