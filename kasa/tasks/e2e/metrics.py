"""E2E NLG challenge metrics (BLEU, NIST, METEOR, ROUGE-L, CIDEr) computed as the official script does.

The official scorer is ``measure_scores.py`` of tuetschek/e2e-metrics (the repository the E2E
challenge, LoRA and KaSA cite). What it does, read from its source (``measure_scores.py``,
``mteval/mteval-v13a-sig.pl``, ``metrics/pymteval.py``) and its README:

* References are grouped per meaning representation (MR): in a TSV/CSV reference file, consecutive
  lines with the same MR form one multi-reference instance; one system output per MR.
* BLEU and NIST come from MT-Eval ``mteval-v13a-sig.pl`` (Perl) by default (``-p`` switches to a Python
  port). Its normalisation lower-cases ASCII letters (``tr/[A-Z]/[a-z]/``; no ``-c`` flag is passed) and
  applies the v11b/13a tokenisation (punctuation split, period/comma split unless next to a digit).
  BLEU: corpus-level, 4-grams, clipped counts against the per-n-gram maximum over the references,
  brevity penalty from the closest reference length (ties -> shorter; empty padding references
  skipped), mteval's "exp" smoothing of zero n-gram matches. NIST: 5-grams, information weights
  ``log2(count(w1..wn-1) / count(w1..wn))`` over all reference segments of the corpus (unigram
  denominator: the number of reference words), matches clipped against the per-n-gram maximum over
  references, length penalty ``exp(-beta * log(ratio)^2)`` with beta set so that ratio 2/3 gives
  0.5, where the reference length is total reference words / (non-empty references / segments)
  (the "-sig" edit for a variable number of references).
* METEOR, ROUGE-L and CIDEr come from the MS-COCO caption evaluation code (``pycocoevalcap``):
  every text is first run through the Stanford CoreNLP 3.4.1 ``PTBTokenizer`` with ``-lowerCase``
  and PTB punctuation tokens are dropped (``-lrb-``/``-rrb-`` survive: the drop list is upper case);
  METEOR is ``meteor-1.5.jar -l en -norm`` with corpus-level aggregated statistics; ROUGE-L is the
  LCS F-measure with beta 1.2 from the maximum precision and maximum recall over the references,
  averaged over instances; CIDEr is the COCO ``Cider`` scorer (CIDEr-D: tf-idf 1-4-grams with
  document frequencies over the evaluated references, clipping, Gaussian length penalty sigma 6,
  x10).
* Reported scale: BLEU, METEOR, ROUGE-L in [0, 1]; NIST and CIDEr unbounded (LoRA/KaSA tables show
  BLEU, METEOR, ROUGE-L x100). :func:`to_paper_scale` converts.

Implementation here: BLEU via ``sacrebleu`` (its 13a tokeniser and "exp" smoothing reproduce
mteval-v13a; input pre-lower-cased ASCII-only as the Perl does), NIST re-implemented from the formula
above (``nltk``'s NIST picks one best reference per segment, which is not what mteval does), METEOR /
ROUGE-L / CIDEr via ``pycocoevalcap``'s scorers and the same CoreNLP jar it ships. Java is needed for the
tokeniser and METEOR; without it a pure-Python approximation of the tokeniser and of METEOR are used and a
warning says so: METEOR 1.5's statistics (its "en" parameters, function-word weighting with the jar's word
list, stage weights) from exact and Snowball-stem matches only, aggregated over the corpus as the jar does
(``MeteorStats.addStats``), but with no synonym or paraphrase stage and a greedy aligner, so the number is
not comparable with the jar's. The result then records ``backend="python-approx"`` and
``not_comparable={"METEOR": ...}``. Measured (commands in docs/protocols.md (Evaluation)): jar 46.43 vs
this fallback 43.88 on the test fixture, 51.21 vs 49.70 on the 213 BIG-bench MRs.
"""

from __future__ import annotations

import atexit
import math
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
# PTB tokens removed by pycocoevalcap's tokenizer wrapper (compared after -lowerCase, so the
# bracket tokens, which are listed in upper case, are never removed: kept for fidelity).
COCO_PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

__all__ = [
    "METRICS",
    "E2EScores",
    "group_references",
    "one_line",
    "mteval_normalize",
    "bleu",
    "nist",
    "ptb_tokenize",
    "meteor",
    "rouge_l",
    "cider",
    "e2e_metrics",
    "to_paper_scale",
    "java_available",
]


# ---------------------------------------------------------------------------------------------
# grouping


def group_references(mrs: Sequence[str], refs: Sequence[str]) -> "OrderedDict[str, list[str]]":
    """Group references by identical MR string, keeping the first-seen order of MRs and of references.

    The official script groups *consecutive* identical MRs; on E2E's files (sorted by MR) this is the
    same grouping, and grouping all occurrences is the robust choice for shuffled inputs.
    """
    if len(mrs) != len(refs):
        raise ValueError(f"got {len(mrs)} MRs but {len(refs)} references")
    grouped: OrderedDict[str, list[str]] = OrderedDict()
    for mr, ref in zip(mrs, refs):
        grouped.setdefault(mr, []).append(ref)
    return grouped


# Every line boundary of str.splitlines (\r\n first, so it becomes one space). The texts go to the CoreNLP
# tokeniser one per line, and it also breaks lines at \r, \x0b, \x0c, U+2028 and U+2029 (and writes U+0085 as
# "..."): one such character in one output shifted every later line onto the wrong references. Replaced by a
# space before any metric sees the text.
_LINE_BREAK = re.compile("\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def one_line(text: str) -> str:
    """``text`` with every line break (``str.splitlines`` semantics) replaced by a space."""
    return _LINE_BREAK.sub(" ", text)


def _check_inputs(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if isinstance(hypotheses, str):
        raise TypeError("hypotheses must be a sequence of strings, not one string")
    if len(hypotheses) != len(references):
        raise ValueError(f"got {len(hypotheses)} hypotheses but {len(references)} reference groups")
    if not hypotheses:
        raise ValueError("nothing to score: no hypotheses")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"instance {i}: references must be a non-empty list of strings, got {refs!r}")


# ---------------------------------------------------------------------------------------------
# MT-Eval side: BLEU and NIST


def _ascii_lower(text: str) -> str:
    # mteval lower-cases with tr/[A-Z]/[a-z]/: ASCII only, unlike str.lower().
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def mteval_normalize(text: str, lowercase: bool = True) -> list[str]:
    """Tokens of ``text`` after mteval-v13a's default normalisation (what BLEU/NIST see)."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    # mteval joins a segment's whitespace runs before normalising (the SGML reader).
    text = re.sub(r"\s+", " ", text)
    if lowercase:
        text = _ascii_lower(text)
    return Tokenizer13a()(text).split()


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU in [0, 1] as mteval-v13a computes it (lower-cased, 13a tokens, closest ref length)."""
    import sacrebleu

    _check_inputs(hypotheses, references)
    hyps = [_ascii_lower(re.sub(r"\s+", " ", h)) for h in hypotheses]
    width = max(len(r) for r in references)
    # sacrebleu takes reference *streams*; None pads instances with fewer references and is skipped,
    # which is what mteval's empty padding references amount to.
    streams = [
        [_ascii_lower(re.sub(r"\s+", " ", refs[k])) if k < len(refs) else None for refs in references]
        for k in range(width)
    ]
    result = sacrebleu.corpus_bleu(hyps, streams, tokenize="13a", lowercase=False, smooth_method="exp")
    return result.score / 100.0


def _ngram_counts(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def nist(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 5) -> float:
    """Corpus NIST (5-grams) as e2e-metrics' ``mteval-v13a-sig.pl`` computes it."""
    _check_inputs(hypotheses, references)
    hyp_toks = [mteval_normalize(h) for h in hypotheses]
    ref_toks = [[mteval_normalize(r) for r in refs] for refs in references]

    # Information weights from every reference segment of the corpus.
    counts: Counter = Counter()
    total_ref_words = 0
    for refs in ref_toks:
        for ref in refs:
            total_ref_words += len(ref)
            for n in range(1, max_n + 1):
                counts.update(_ngram_counts(ref, n))

    def info(ngram: tuple) -> float:
        denom = counts[ngram[:-1]] if len(ngram) > 1 else total_ref_words
        return -math.log2(counts[ngram] / denom)

    hit_info = [0.0] * (max_n + 1)
    sys_ngrams = [0] * (max_n + 1)
    ref_words = 0
    nonempty_refs = 0
    for hyp, refs in zip(hyp_toks, ref_toks):
        for n in range(1, max_n + 1):
            sys_ngrams[n] += max(len(hyp) - n + 1, 0)
            ref_max: Counter = Counter()
            for ref in refs:
                ref_max |= _ngram_counts(ref, n)  # per-n-gram maximum over references
            for ngram, c in _ngram_counts(hyp, n).items():
                m = min(c, ref_max.get(ngram, 0))
                if m:
                    hit_info[n] += info(ngram) * m
        ref_words += sum(len(r) for r in refs)
        nonempty_refs += sum(1 for r in refs if r)
    score = sum(hit_info[n] / max(sys_ngrams[n], 1) for n in range(1, max_n + 1))
    avg_refs_per_seg = nonempty_refs / len(hyp_toks)
    ref_len = ref_words / avg_refs_per_seg if avg_refs_per_seg else 0.0
    return score * _nist_length_penalty(sys_ngrams[1] / ref_len if ref_len else 0.0)


def _nist_length_penalty(ratio: float) -> float:
    if ratio >= 1:
        return 1.0
    if ratio <= 0:
        return 0.0
    beta = -math.log(0.5) / math.log(1.5) ** 2
    return math.exp(-beta * math.log(ratio) ** 2)


# ---------------------------------------------------------------------------------------------
# MS-COCO side: tokenisation, METEOR, ROUGE-L, CIDEr


def _coco_dir() -> Path | None:
    import importlib.util

    # pycocoevalcap is a namespace package on PyPI (no __init__.py): locate it by its search path.
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def java_available() -> bool:
    """Whether the Java tools of the official pipeline (CoreNLP tokeniser, METEOR 1.5) can run here."""
    if os.environ.get("KASA_E2E_NO_JAVA"):
        return False
    root = _coco_dir()
    return bool(
        shutil.which("java")
        and root is not None
        and (root / "tokenizer" / "stanford-corenlp-3.4.1.jar").exists()
        and (root / "meteor" / "meteor-1.5.jar").exists()
    )


def _ptb_java(texts: Sequence[str]) -> list[str]:
    jar = _coco_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    # Same command as pycocoevalcap's wrapper, but the temporary file goes to a temp dir: the package
    # folder may be read-only.
    with tempfile.TemporaryDirectory(prefix="kasa-ptb-") as tmp:
        path = Path(tmp) / "sentences.txt"
        path.write_text("\n".join(one_line(t) for t in texts), encoding="utf-8")
        out = subprocess.run(
            ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
             "-lowerCase", str(path)],
            capture_output=True, check=True,
        ).stdout.decode("utf-8")
    lines = out.split("\n")
    # One line per text, exactly: anything else means a text was split or merged, and every later line would be
    # scored against the wrong references.
    if len(lines) != len(texts):
        raise RuntimeError(f"PTBTokenizer returned {len(lines)} lines for {len(texts)} texts; a text was split or "
                           "merged by a line break the normalisation missed")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in COCO_PUNCTUATIONS) for line in lines]


# CoreNLP's PTB normalisations that matter after lower-casing: brackets, currency, quotes.
_PTB_MAP = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-",
            "£": "#", "€": "$", "¢": "cents", '"': "''", "«": "``", "»": "''", "“": "``", "”": "''"}
_PTB_TOKEN = re.compile(
    r"n't|'(?:s|re|ve|ll|d|m)\b"                 # clitics (already separated below)
    r"|(?:[^\W\d_]\.){2,}"                        # acronyms keep their final period: u.s., e.g.
    r"|\d+(?:[.,:/-]\d+)*"                        # numbers, times, ranges
    r"|\w+(?:[-'&.]\w+)*"                         # words, hyphenated words, abbreviations
    r"|\.\.\.|--|``|''|\S",                       # punctuation and any other symbol
)


def _ptb_python(text: str) -> str:
    """Approximation of CoreNLP's PTBTokenizer (-lowerCase) + COCO punctuation removal."""
    text = one_line(text).lower()
    text = re.sub(r"(\w)(n't)\b", r"\1 \2", text)
    text = re.sub(r"(\w)('(?:s|re|ve|ll|d|m))\b", r"\1 \2", text)
    tokens = []
    for tok in _PTB_TOKEN.findall(text):
        if tok.endswith(".") and len(tok) > 1 and tok not in ("...",) and not re.search(r"\.\w", tok):
            tokens.extend([tok[:-1], "."])
            continue
        tokens.append(_PTB_MAP.get(tok, tok))
    return " ".join(t for t in tokens if t not in COCO_PUNCTUATIONS)


def ptb_tokenize(texts: Sequence[str], use_java: bool | None = None) -> list[str]:
    """COCO-style tokenisation of each text (lower-cased PTB tokens joined by single spaces)."""
    texts = list(texts)
    if use_java is None:
        use_java = java_available()
    if use_java:
        return _ptb_java(texts)
    return [_ptb_python(t) for t in texts]


class _MeteorProcess:
    """One long-lived METEOR 1.5 JVM (start-up loads a 60 MB paraphrase table, ~10 s)."""

    _instance: Any = None

    @classmethod
    def get(cls):
        if cls._instance is None:
            from pycocoevalcap.meteor.meteor import Meteor

            cls._instance = Meteor()
            atexit.register(cls.close)
        return cls._instance

    @classmethod
    def close(cls) -> None:
        inst, cls._instance = cls._instance, None
        if inst is not None:
            try:
                inst.meteor_p.stdin.close()
                inst.meteor_p.kill()
                inst.meteor_p.wait()
            except Exception:  # pragma: no cover - interpreter shutdown
                pass


# METEOR 1.5's "en" parameters (Constants.java, task "rank", the default): alpha, beta, gamma, delta, and the
# weights of its match stages exact, stem, synonym, paraphrase.
METEOR_PARAMS = (0.85, 0.20, 0.60, 0.75)
METEOR_STAGE_WEIGHTS = (1.0, 0.6, 0.8, 0.6)
# What the fallback cannot reproduce without the jar's data and aligner; recorded with the score.
METEOR_FALLBACK_NOTE = ("METEOR without Java: exact and Snowball-stem stages only (no WordNet synonym or paraphrase "
                        "stage), a greedy aligner instead of METEOR 1.5's beam search; statistics aggregated over the "
                        "corpus as METEOR 1.5 does. Not comparable with the official METEOR 1.5 number.")


@dataclass
class MeteorStats:
    """METEOR 1.5's sufficient statistics of one segment or a corpus (``MeteorStats.java``).

    ``*_matches``: matches per stage (exact, stem, synonym, paraphrase) on content / function words; the
    fallback fills the first two stages only.
    """

    test_len: float = 0.0
    ref_len: float = 0.0
    test_function: float = 0.0
    ref_function: float = 0.0
    test_content_matches: list = field(default_factory=lambda: [0.0] * 4)
    ref_content_matches: list = field(default_factory=lambda: [0.0] * 4)
    test_function_matches: list = field(default_factory=lambda: [0.0] * 4)
    ref_function_matches: list = field(default_factory=lambda: [0.0] * 4)
    chunks: float = 0.0

    @classmethod
    def from_jar(cls, line: str) -> "MeteorStats":
        """Parse the jar's ``SCORE`` answer (23 numbers: lengths, function words, 4 x 4 stage matches, chunks,
        word matches); the word-match totals equal the stage sums for word-level scoring."""
        v = [float(x) for x in line.split()]
        if len(v) != 23:
            raise ValueError(f"METEOR statistics have 23 fields, got {len(v)}: {line!r}")
        st = [v[4 + 4 * k: 8 + 4 * k] for k in range(4)]
        return cls(v[0], v[1], v[2], v[3], [x[0] for x in st], [x[1] for x in st], [x[2] for x in st],
                   [x[3] for x in st], v[20])

    @property
    def test_matches(self) -> float:
        return sum(self.test_content_matches) + sum(self.test_function_matches)

    @property
    def ref_matches(self) -> float:
        return sum(self.ref_content_matches) + sum(self.ref_function_matches)

    def complete(self) -> bool:
        """Every word of both sides matched, in one chunk (METEOR 1.5 then drops the fragmentation penalty)."""
        return self.test_matches == self.test_len and self.ref_matches == self.ref_len and self.chunks == 1

    def add(self, other: "MeteorStats") -> None:
        """Corpus aggregation as ``MeteorStats.addStats``: sums, except a complete segment's one chunk."""
        for name in ("test_len", "ref_len", "test_function", "ref_function"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("test_content_matches", "ref_content_matches", "test_function_matches", "ref_function_matches"):
            setattr(self, name, [a + b for a, b in zip(getattr(self, name), getattr(other, name))])
        if not other.complete():
            self.chunks += other.chunks

    def score(self) -> float:
        """``MeteorScorer.computeMetrics``: delta-weighted precision/recall, Fmean, fragmentation penalty."""
        alpha, beta, gamma, delta = METEOR_PARAMS
        w = METEOR_STAGE_WEIGHTS
        t_len = delta * (self.test_len - self.test_function) + (1 - delta) * self.test_function
        r_len = delta * (self.ref_len - self.ref_function) + (1 - delta) * self.ref_function
        t_m = sum((c * delta + f * (1 - delta)) * wi
                  for c, f, wi in zip(self.test_content_matches, self.test_function_matches, w))
        r_m = sum((c * delta + f * (1 - delta)) * wi
                  for c, f, wi in zip(self.ref_content_matches, self.ref_function_matches, w))
        if not (t_len and r_len and t_m and r_m):
            return 0.0  # the jar's NaN -> 0 (nothing matched, or an empty side)
        p, r = t_m / t_len, r_m / r_len
        fmean = 1.0 / ((1 - alpha) / p + alpha / r)
        frag = 0.0 if self.complete() else self.chunks / ((self.test_matches + self.ref_matches) / 2)
        return max(fmean * (1 - gamma * frag**beta), 0.0)


@lru_cache(maxsize=1)
def _meteor_function_words() -> frozenset:
    """METEOR 1.5's English function-word list, read from the jar when it is there (no Java needed)."""
    import zipfile

    root = _coco_dir()
    jar = root / "meteor" / "meteor-1.5.jar" if root is not None else None
    if jar is None or not jar.exists():
        return frozenset()
    with zipfile.ZipFile(jar) as zf:
        return frozenset(zf.read("function/english.words").decode("utf-8").split())


@lru_cache(maxsize=1)
def _snowball():
    from nltk.stem.snowball import SnowballStemmer

    return SnowballStemmer("english")  # METEOR 1.5's stem stage: Snowball (Porter2) English


def _align(test: Sequence[str], ref: Sequence[str]) -> list[tuple[int, int, int]]:
    """One-to-one word matches ``(test_pos, ref_pos, stage)``: exact words first, then equal stems.

    Greedy left to right: a word continues the previous match's chunk when it can, else takes the first free
    reference position after the last match (else the first free one).
    """
    stem = _snowball().stem
    keys = [(list(test), list(ref)), ([stem(w) for w in test], [stem(w) for w in ref])]
    pairs: dict[int, tuple[int, int]] = {}
    used: set[int] = set()
    for stage, (tk, rk) in enumerate(keys):
        last = -1
        for i, k in enumerate(tk):
            if i in pairs:
                last = pairs[i][0]
                continue
            free = [j for j, rkj in enumerate(rk) if rkj == k and j not in used]
            if not free:
                continue
            prev = pairs.get(i - 1)
            if prev is not None and prev[0] + 1 in free:
                j = prev[0] + 1
            else:
                j = next((j for j in free if j > last), free[0])
            pairs[i] = (j, stage)
            used.add(j)
            last = j
    return sorted((i, j, st) for i, (j, st) in pairs.items())


def meteor_stats(test: Sequence[str], ref: Sequence[str], function_words: frozenset | None = None) -> MeteorStats:
    """The statistics of one test/reference pair of token lists under :func:`_align`'s alignment."""
    fw = _meteor_function_words() if function_words is None else function_words
    s = MeteorStats(test_len=len(test), ref_len=len(ref), test_function=sum(w in fw for w in test),
                    ref_function=sum(w in fw for w in ref))
    matches = _align(test, ref)
    for i, j, st in matches:
        (s.test_function_matches if test[i] in fw else s.test_content_matches)[st] += 1
        (s.ref_function_matches if ref[j] in fw else s.ref_content_matches)[st] += 1
    # chunks: runs of matches adjacent on both sides
    s.chunks = float(sum(1 for k, (i, j, _) in enumerate(matches)
                         if k == 0 or not (i == matches[k - 1][0] + 1 and j == matches[k - 1][1] + 1)))
    return s


def _meteor_python(hyp_tok: Sequence[str], refs_tok: Sequence[Sequence[str]]) -> float:
    """Corpus METEOR without Java: per segment the best-scoring reference's statistics (as the jar picks it),
    summed over the corpus and scored once (METEOR 1.5's aggregation); see :data:`METEOR_FALLBACK_NOTE`."""
    total = MeteorStats()
    for h, refs in zip(hyp_tok, refs_tok):
        best = None
        for r in refs:
            st = meteor_stats(h.split(), r.split())
            if best is None or st.score() > best.score():
                best = st
        total.add(best)
    return total.score()


def meteor(hyp_tok: Sequence[str], refs_tok: Sequence[Sequence[str]], use_java: bool | None = None) -> float:
    """Corpus METEOR 1.5 of PTB-tokenised texts (see :func:`ptb_tokenize`)."""
    if use_java is None:
        use_java = java_available()
    if use_java:
        gts = {i: list(refs) for i, refs in enumerate(refs_tok)}
        res = {i: [h] for i, h in enumerate(hyp_tok)}
        score, _ = _MeteorProcess.get().compute_score(gts, res)
        return float(score)
    return _meteor_python(hyp_tok, refs_tok)


def rouge_l(hyp_tok: Sequence[str], refs_tok: Sequence[Sequence[str]]) -> float:
    """COCO ROUGE-L (beta 1.2, max precision and max recall over references), mean over instances."""
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: list(refs) for i, refs in enumerate(refs_tok)}
    res = {i: [h] for i, h in enumerate(hyp_tok)}
    score, _ = Rouge().compute_score(gts, res)
    return float(score)


def cider(hyp_tok: Sequence[str], refs_tok: Sequence[Sequence[str]]) -> float:
    """COCO CIDEr (CIDEr-D implementation) with document frequencies from these references."""
    from pycocoevalcap.cider.cider import Cider

    gts = {i: list(refs) for i, refs in enumerate(refs_tok)}
    res = {i: [h] for i, h in enumerate(hyp_tok)}
    score, _ = Cider().compute_score(gts, res)
    return float(score)


# ---------------------------------------------------------------------------------------------
# all five


@dataclass
class E2EScores:
    """The five official E2E scores on the official script's scale, plus how they were computed."""

    BLEU: float
    NIST: float
    METEOR: float
    ROUGE_L: float
    CIDEr: float
    backend: str = "official"  # "official" (Java tools) or "python-approx"
    n_instances: int = 0
    details: dict = field(default_factory=dict)
    # metric -> why it is not comparable with the official script's number (empty for the official backend)
    not_comparable: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        """Just the five metrics (for logging)."""
        return {m: getattr(self, m) for m in METRICS}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def to_paper_scale(scores: Mapping[str, float] | E2EScores) -> dict[str, float]:
    """BLEU, METEOR, ROUGE-L x100 as in the LoRA / KaSA E2E tables; NIST and CIDEr unchanged."""
    d = scores.as_dict() if isinstance(scores, E2EScores) else dict(scores)
    return {m: (d[m] * 100.0 if m in ("BLEU", "METEOR", "ROUGE_L") else d[m]) for m in METRICS if m in d}


def e2e_metrics(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    use_java: bool | None = None,
) -> E2EScores:
    """All five E2E metrics for one output per MR against that MR's list of references.

    ``use_java=None`` uses the official Java tools when available and otherwise falls back to the
    pure-Python approximations with a warning; ``True`` insists on Java, ``False`` forbids it.
    """
    _check_inputs(hypotheses, references)
    hypotheses = [one_line(str(h)) for h in hypotheses]
    references = [[one_line(str(r)) for r in refs] for refs in references]
    if use_java is None:
        use_java = java_available()
        if not use_java:
            warnings.warn(
                "E2E metrics: Java or the pycocoevalcap jars are unavailable, so METEOR and the COCO "
                "tokenisation use pure-Python approximations: METEOR is not comparable with METEOR 1.5 (no "
                "synonym/paraphrase stages; recorded in not_comparable), ROUGE-L/CIDEr may differ slightly "
                "where the tokeniser approximation does (BLEU and NIST are unaffected).",
                RuntimeWarning,
                stacklevel=2,
            )
    elif use_java and not java_available():
        raise RuntimeError("use_java=True but `java` or the pycocoevalcap jars were not found")

    flat_refs = [r for refs in references for r in refs]
    tokenized = ptb_tokenize(list(hypotheses) + flat_refs, use_java=use_java)
    hyp_tok = tokenized[: len(hypotheses)]
    refs_tok: list[list[str]] = []
    pos = len(hypotheses)
    for refs in references:
        refs_tok.append(tokenized[pos : pos + len(refs)])
        pos += len(refs)

    return E2EScores(
        BLEU=bleu(hypotheses, references),
        NIST=nist(hypotheses, references),
        METEOR=meteor(hyp_tok, refs_tok, use_java=use_java),
        ROUGE_L=rouge_l(hyp_tok, refs_tok),
        CIDEr=cider(hyp_tok, refs_tok),
        backend="official" if use_java else "python-approx",
        n_instances=len(hypotheses),
        not_comparable={} if use_java else {"METEOR": METEOR_FALLBACK_NOTE},
    )
