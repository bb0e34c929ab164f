"""E2E metrics: each metric checked against an independent computation on a small multi-reference fixture.

Independent references used here: hand-computed values for tiny cases, ``nltk``'s BLEU / NIST on the
same mteval tokens, and from-the-formula re-implementations of ROUGE-L (recursive LCS) and CIDEr-D
written in this file. The Java path (CoreNLP tokeniser + METEOR 1.5 jar) is checked against
pycocoevalcap's own pipeline in a ``slow`` test (the METEOR JVM takes 10-25 s to start).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from functools import lru_cache
from pathlib import Path

import pytest

from kasa.tasks.e2e import data as e2e_data
from kasa.tasks.e2e import metrics as e2e

FIXTURE = Path(__file__).parent / "fixtures" / "e2e_fixture.json"


@pytest.fixture(scope="module")
def fixture():
    data = json.loads(FIXTURE.read_text())["instances"]
    return [d["hypothesis"] for d in data], [d["references"] for d in data], [d["mr"] for d in data]


# ------------------------------------------------------------------ grouping


def test_group_references_keeps_order_and_groups_non_consecutive():
    mrs = ["m1", "m1", "m2", "m1", "m3"]
    refs = ["a", "b", "c", "d", "e"]
    g = e2e.group_references(mrs, refs)
    assert list(g) == ["m1", "m2", "m3"]
    assert g["m1"] == ["a", "b", "d"]
    with pytest.raises(ValueError, match="2 MRs but 1"):
        e2e.group_references(["x", "y"], ["z"])


def test_input_validation():
    with pytest.raises(ValueError, match="2 hypotheses but 1"):
        e2e.bleu(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="non-empty list"):
        e2e.nist(["a"], [[]])
    with pytest.raises(TypeError):
        e2e.bleu("abc", [["abc"]])


# ------------------------------------------------------------------ BLEU


def test_mteval_normalisation():
    # ASCII-only lower-casing as the Perl tr/[A-Z]/[a-z]/; punctuation split except inside numbers.
    # "£" is not in mteval's ASCII punctuation classes, so "£20" stays one token.
    assert e2e.mteval_normalize("The Mill costs £20-25, I think. 3.5 stars!") == [
        "the", "mill", "costs", "£20", "-", "25", ",", "i", "think", ".", "3.5", "stars", "!"]
    assert e2e.mteval_normalize("ÉCOLE École") == ["École", "École"]


def test_bleu_hand_computed():
    # p1..p4 = 4/5, 3/4, 2/3, 1/2 and no brevity penalty; case and a final period are normalised away.
    expected = (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert e2e.bleu(["A b c d e"], [["a b c d f"]]) == pytest.approx(expected, abs=1e-9)
    # Closest reference length (5, not 9) sets the brevity penalty: hyp of 4 tokens -> exp(1 - 5/4).
    bp = math.exp(1 - 5 / 4)
    assert e2e.bleu(["a b c d"], [["a b c d e", "x a b c d y z w v"]]) == pytest.approx(bp, abs=1e-9)


def test_bleu_matches_nltk_on_fixture(fixture):
    from nltk.translate.bleu_score import corpus_bleu

    hyps, refs, _ = fixture
    ours = e2e.bleu(hyps, refs)
    theirs = corpus_bleu([[e2e.mteval_normalize(r) for r in rs] for rs in refs],
                         [e2e.mteval_normalize(h) for h in hyps])
    assert ours == pytest.approx(theirs, abs=1e-9)
    assert 0.3 < ours < 0.9


# ------------------------------------------------------------------ NIST


def test_nist_hand_computed_multi_reference():
    # Reference words: a b | a c | b  -> 5 words; counts a:2 b:2 c:1, (a b):1.
    refs = [["a b", "a c"], ["b"]]
    # Hyps "a b", "b c": unigram hits a, b, b (info log2(5/2) each) over 4 hyp words; bigram hit (a b)
    # with info log2(2/1) = 1 over 2 hyp bigrams; hyp length 4 >= 5 / (3 refs / 2 segs): no penalty.
    expected = 3 * math.log2(5 / 2) / 4 + 1 / 2
    assert e2e.nist(["a b", "b c"], refs) == pytest.approx(expected, abs=1e-12)
    # Short hyps: ratio 2 / (5 / 1.5) = 0.6 -> penalty exp(-beta ln(0.6)^2), beta = ln 2 / ln(1.5)^2.
    beta = math.log(2) / math.log(1.5) ** 2
    penalty = math.exp(-beta * math.log(0.6) ** 2)
    assert e2e.nist(["a", "b"], refs) == pytest.approx(math.log2(5 / 2) * penalty, abs=1e-12)


def test_nist_matches_nltk_with_single_references(fixture):
    # With one reference per instance nltk's NIST (best single reference) is mteval's NIST.
    from nltk.translate.nist_score import corpus_nist

    hyps, refs, _ = fixture
    single = [[rs[0]] for rs in refs]
    ours = e2e.nist(hyps, single)
    theirs = corpus_nist([[e2e.mteval_normalize(rs[0])] for rs in refs], [e2e.mteval_normalize(h) for h in hyps])
    assert ours == pytest.approx(theirs, abs=1e-9)
    assert e2e.nist(hyps, refs) > ours  # more references -> more matches


# ------------------------------------------------------------------ COCO side (Python tokenisation)


def _lcs(a: tuple, b: tuple) -> int:
    @lru_cache(maxsize=None)
    def go(i: int, j: int) -> int:
        if i == len(a) or j == len(b):
            return 0
        if a[i] == b[j]:
            return 1 + go(i + 1, j + 1)
        return max(go(i + 1, j), go(i, j + 1))

    return go(0, 0)


def _rouge_l_reference(hyps, refs, beta=1.2):
    scores = []
    for h, rs in zip(hyps, refs):
        ht = tuple(h.split(" "))
        lcs = [_lcs(ht, tuple(r.split(" "))) for r in rs]
        p = max(length / len(ht) for length in lcs)
        r = max(length / len(r.split(" ")) for length, r in zip(lcs, rs))
        scores.append(0.0 if p == 0 or r == 0 else (1 + beta**2) * p * r / (r + beta**2 * p))
    return sum(scores) / len(scores)


def _cider_d_reference(hyps, refs, n_max=4, sigma=6.0):
    """CIDEr-D from its definition, with the COCO implementation's conventions.

    tf-idf weight tf * (log N - log max(1, df)), df over the N reference sets; per n: clipped
    dot product min(g_hyp, g_ref) * g_ref over the norms, times exp(-(len_h - len_r)^2 / (2 sigma^2))
    where COCO's "length" counts bigrams; mean over n, mean over references, x10, mean over instances.
    """
    grams = lambda toks, n: Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))  # noqa: E731
    ref_toks = [[r.split() for r in rs] for rs in refs]
    df = Counter()
    for rs in ref_toks:
        seen = set()
        for r in rs:
            for n in range(1, n_max + 1):
                seen |= set(grams(r, n))
        df.update(seen)
    log_n = math.log(len(refs))

    def vec(toks):
        vs, norms = [], []
        for n in range(1, n_max + 1):
            v = {g: c * (log_n - math.log(max(1.0, df[g]))) for g, c in grams(toks, n).items()}
            vs.append(v)
            norms.append(math.sqrt(sum(x * x for x in v.values())))
        return vs, norms, max(len(toks) - 1, 0)

    total = 0.0
    for h, rs in zip(hyps, ref_toks):
        vh, nh, lh = vec(h.split())
        per_ref = []
        for r in rs:
            vr, nr, lr = vec(r)
            vals = []
            for k in range(n_max):
                dot = sum(min(x, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, x in vh[k].items())
                val = dot / (nh[k] * nr[k]) if nh[k] and nr[k] else 0.0
                vals.append(val * math.exp(-((lh - lr) ** 2) / (2 * sigma**2)))
            per_ref.append(sum(vals) / n_max * 10.0)
        total += sum(per_ref) / len(per_ref)
    return total / len(hyps)


def _tokenized(fixture):
    hyps, refs, _ = fixture
    tok = e2e.ptb_tokenize(hyps + [r for rs in refs for r in rs], use_java=False)
    hyp_tok, refs_tok, pos = tok[: len(hyps)], [], len(hyps)
    for rs in refs:
        refs_tok.append(tok[pos:pos + len(rs)])
        pos += len(rs)
    return hyp_tok, refs_tok


def test_python_ptb_tokeniser_conventions():
    out = e2e.ptb_tokenize(["Zizzi is a pub (5 out of 5).", "There's a kid-friendly café; it isn't cheap!",
                            "Meals cost £20-25 in the U.S. branch"], use_java=False)
    # COCO's drop list is upper case, so -lrb-/-rrb- survive -lowerCase: the official quirk.
    # CoreNLP normalises the pound sign to PTB's "#".
    assert out == ["zizzi is a pub -lrb- 5 out of 5 -rrb-", "there 's a kid-friendly café it is n't cheap",
                   "meals cost # 20-25 in the u.s. branch"]


def test_rouge_l_hand_and_reference(fixture):
    p, r = 3 / 4, 3 / 5
    hand = (1 + 1.44) * p * r / (r + 1.44 * p)
    assert e2e.rouge_l(["a b c d"], [["a c d e f"]]) == pytest.approx(hand, abs=1e-12)
    hyp_tok, refs_tok = _tokenized(fixture)
    assert e2e.rouge_l(hyp_tok, refs_tok) == pytest.approx(_rouge_l_reference(hyp_tok, refs_tok), abs=1e-12)


def test_cider_hand_and_reference(fixture):
    # Each output equal to its single reference, no n-gram shared across instances: cosine 1, CIDEr 10.
    assert e2e.cider(["a b c x", "d e f g"], [["a b c x"], ["d e f g"]]) == pytest.approx(10.0, abs=1e-9)
    # A 3-token output has no 4-grams: that order scores 0, so (1 + 1 + 1 + 0) / 4 * 10 = 7.5.
    assert e2e.cider(["a b c", "d e f g"], [["a b c"], ["d e f g"]]) == pytest.approx((7.5 + 10) / 2, abs=1e-9)
    hyp_tok, refs_tok = _tokenized(fixture)
    assert e2e.cider(hyp_tok, refs_tok) == pytest.approx(_cider_d_reference(hyp_tok, refs_tok), abs=1e-9)


def test_meteor_python_fallback_hand_case():
    # "a pub by river" vs "a pub near by river": P = 1, two chunks over 4 matches, METEOR 1.5 parameters alpha
    # 0.85, beta 0.2, gamma 0.6, delta 0.75, where "a" and "by" are METEOR function words (weight 1 - delta)
    fw = e2e._meteor_function_words()
    assert {"a", "by"} <= fw and not {"pub", "near", "river"} & fw
    p, r = 1.0, (0.75 * 2 + 0.25 * 2) / (0.75 * 3 + 0.25 * 2)
    fmean = p * r / (0.85 * p + 0.15 * r)
    hand = fmean * (1 - 0.6 * (2 / 4) ** 0.2)
    assert e2e.meteor(["a pub by river"], [["a pub near by river"]], use_java=False) == pytest.approx(hand, abs=1e-12)
    # An exact match scores 1 (as the 1.5 jar does: no fragmentation penalty for one full chunk).
    assert e2e.meteor(["the cat sat on the mat"], [["the cat sat on the mat"]], use_java=False) == 1.0


def test_e2e_metrics_python_backend_warns_and_is_consistent(fixture, monkeypatch):
    hyps, refs, _ = fixture
    monkeypatch.setenv("KASA_E2E_NO_JAVA", "1")
    with pytest.warns(RuntimeWarning, match="pure-Python approximations"):
        scores = e2e.e2e_metrics(hyps, refs)
    assert scores.backend == "python-approx" and scores.n_instances == 5
    assert set(scores.not_comparable) == {"METEOR"} and "Not comparable" in scores.to_json()["not_comparable"]["METEOR"]
    hyp_tok, refs_tok = _tokenized(fixture)
    assert scores.BLEU == pytest.approx(e2e.bleu(hyps, refs))
    assert scores.NIST == pytest.approx(e2e.nist(hyps, refs))
    assert scores.ROUGE_L == pytest.approx(_rouge_l_reference(hyp_tok, refs_tok), abs=1e-12)
    assert scores.CIDEr == pytest.approx(_cider_d_reference(hyp_tok, refs_tok), abs=1e-9)
    assert 0 < scores.METEOR < 1
    paper = e2e.to_paper_scale(scores)
    assert paper["BLEU"] == pytest.approx(100 * scores.BLEU) and paper["NIST"] == scores.NIST
    assert set(scores.as_dict()) == set(e2e.METRICS)


def test_use_java_true_without_java_raises(monkeypatch):
    monkeypatch.setenv("KASA_E2E_NO_JAVA", "1")
    with pytest.raises(RuntimeError, match="use_java=True"):
        e2e.e2e_metrics(["a"], [["a"]], use_java=True)


# ------------------------------------------------------------------ Java (official) path


@pytest.mark.skipif(not e2e.java_available(), reason="java or the pycocoevalcap jars are not available")
def test_java_tokeniser_agrees_with_python_approximation(fixture):
    hyps, refs, _ = fixture
    texts = hyps + [r for rs in refs for r in rs]
    assert e2e.ptb_tokenize(texts, use_java=True) == e2e.ptb_tokenize(texts, use_java=False)


@pytest.mark.slow
@pytest.mark.skipif(not e2e.java_available(), reason="java or the pycocoevalcap jars are not available")
def test_official_backend_matches_pycocoevalcap_pipeline(fixture):
    """Our wrapper vs pycocoevalcap's own PTBTokenizer + scorers, fed the COCO structures the official
    script builds (one image per MR, one caption per reference)."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    hyps, refs, _ = fixture
    ours = e2e.e2e_metrics(hyps, refs, use_java=True)
    gts = {f"inst-{i}": [{"caption": r} for r in rs] for i, rs in enumerate(refs)}
    res = {f"inst-{i}": [{"caption": h}] for i, h in enumerate(hyps)}
    tok = PTBTokenizer()
    gts_t, res_t = tok.tokenize(gts), tok.tokenize(res)
    meteor_scorer = Meteor()
    try:
        coco_meteor, _ = meteor_scorer.compute_score(gts_t, res_t)
    finally:
        del meteor_scorer
    assert ours.backend == "official"
    assert ours.METEOR == pytest.approx(coco_meteor, abs=1e-9)
    assert ours.ROUGE_L == pytest.approx(Rouge().compute_score(gts_t, res_t)[0], abs=1e-12)
    assert ours.CIDEr == pytest.approx(Cider().compute_score(gts_t, res_t)[0], abs=1e-9)
    # METEOR 1.5 on identical strings: no fragmentation penalty, score 1.
    same = e2e.meteor(["the cat sat on the mat"], [["the cat sat on the mat"]], use_java=True)
    assert same == pytest.approx(1.0, abs=1e-9)
    print("official:", ours.to_json())
    # The approximate METEOR (exact and stem stages only, corpus statistics) is only in the neighbourhood of
    # the jar: 0.4388 vs 0.4643 on this fixture (the old mean of sentence scores gave 0.391).
    approx = e2e.meteor(*_tokenized(fixture), use_java=False)
    assert abs(approx - ours.METEOR) < 0.05


# ------------------------------------------------------------------ data


def _bigbench_e2e(root: Path, n_mrs: int = 30, refs: int = 3) -> Path:
    """A BIG-bench checkout's ``gem/e2e_nlg/task.json`` in miniature (one example per MR/reference pair)."""
    examples = [{"input": f"name[Place {i}], food[Thai], area[riverside]", "target": f"Place {i} serves Thai, ref {j}."}
                for i in range(n_mrs) for j in range(refs)]
    task = root / "gem" / "e2e_nlg" / "task.json"
    task.parent.mkdir(parents=True)
    task.write_text(json.dumps({"name": "e2e_nlg", "examples": examples}))
    return root


def test_load_e2e_bigbench_splits_by_mr_deterministically(tmp_path, monkeypatch):
    root = _bigbench_e2e(tmp_path / "benchmark_tasks")
    splits = e2e_data.load_e2e_bigbench(path=root)
    again = e2e_data.load_e2e_bigbench(path=str(root))
    assert splits == again
    assert list(splits) == ["train", "validation", "test"]
    mr_sets = [set(s) for s in splits.values()]
    assert not (mr_sets[0] & mr_sets[1]) and not (mr_sets[0] & mr_sets[2]) and not (mr_sets[1] & mr_sets[2])
    assert sum(len(s) for s in mr_sets) == 30
    assert sum(len(refs) for s in splits.values() for refs in s.values()) == 90
    assert [len(s) for s in mr_sets] == [24, 3, 3]
    assert all(len(refs) == 3 for s in splits.values() for refs in s.values())  # an MR keeps all its references
    other = e2e_data.load_e2e_bigbench(seed=1, path=root)
    assert set(other["test"]) != set(splits["test"])
    rows = e2e_data.flatten_grouped(splits["validation"])
    assert {"meaning_representation", "human_reference"} == set(rows[0])
    monkeypatch.setenv("KASA_BIGBENCH", str(root))  # the user's BIG-bench from the environment
    assert e2e_data.load_e2e_bigbench() == splits
    monkeypatch.delenv("KASA_BIGBENCH")
    from kasa.errors import MissingAssetError

    with pytest.raises(MissingAssetError, match="not packaged any more"):
        e2e_data.load_e2e_bigbench()


def test_load_e2e_nlg_from_the_original_release_folder(tmp_path):
    """tuetschek/e2e-dataset's own files: trainset.csv, devset.csv, testset_w_refs.csv, columns mr,ref (quoted
    MRs hold commas); the references of an MR sit on consecutive lines."""
    import csv

    from kasa.errors import DatasetError

    rows = {"trainset.csv": [("name[Aromi], eatType[coffee shop]", "Aromi is a coffee shop."),
                             ("name[Aromi], eatType[coffee shop]", "There is a coffee shop, Aromi."),
                             ("name[Cotto], food[Italian]", 'Cotto serves "Italian" food.')],
            "devset.csv": [("name[Zizzi], area[riverside]", "Zizzi is by the river.")],
            "testset_w_refs.csv": [("name[The Eagle], priceRange[cheap]", "The Eagle is cheap."),
                                   ("name[The Eagle], priceRange[cheap]", "A cheap place: The Eagle.")]}
    for name, items in rows.items():
        with (tmp_path / name).open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["mr", "ref"])
            w.writerows(items)
    out = e2e_data.load_e2e_nlg(str(tmp_path))
    assert list(out) == ["train", "validation", "test"]
    assert out["train"] == {"name[Aromi], eatType[coffee shop]": ["Aromi is a coffee shop.",
                                                                  "There is a coffee shop, Aromi."],
                            "name[Cotto], food[Italian]": ['Cotto serves "Italian" food.']}
    assert out["test"] == {"name[The Eagle], priceRange[cheap]": ["The Eagle is cheap.", "A cheap place: The Eagle."]}
    assert list(e2e_data.load_e2e_nlg(str(tmp_path), splits=["validation"])) == ["validation"]
    # the hub's columns in <split>.jsonl are read too
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "train.jsonl").write_text(json.dumps({"meaning_representation": "name[A]", "human_reference": "A."}) + "\n")
    assert e2e_data.load_e2e_nlg(str(hub), splits=["train"]) == {"train": {"name[A]": ["A."]}}
    with pytest.raises(DatasetError, match="has no 'test' split: expected testset_w_refs.csv"):
        e2e_data.load_e2e_nlg(str(hub), splits=["test"])
    (hub / "validation.csv").write_text("input,target\nname[A],A.\n")
    with pytest.raises(DatasetError, match="lacks fields"):
        e2e_data.load_e2e_nlg(str(hub), splits=["validation"])
    with pytest.raises(DatasetError, match="does not exist"):
        e2e_data.load_e2e_nlg(str(tmp_path / "missing"))


def test_load_e2e_nlg_hub_format_from_local_files(tmp_path):
    import csv

    rows = {
        "train": [("name[A], food[Thai]", "A serves Thai food."), ("name[A], food[Thai]", "Thai food at A."),
                  ("name[B], area[riverside]", "B is by the river.")],
        "test": [("name[C], eatType[pub]", "C is a pub."), ("name[C], eatType[pub]", "The pub C.")],
    }
    files = {}
    for split, items in rows.items():
        path = tmp_path / f"{split}.csv"
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["meaning_representation", "human_reference"])
            w.writerows(items)
        files[split] = str(path)
    out = e2e_data.load_e2e_nlg("csv", data_files=files, cache_dir=str(tmp_path / "cache"))
    assert out["train"] == {"name[A], food[Thai]": ["A serves Thai food.", "Thai food at A."],
                            "name[B], area[riverside]": ["B is by the river."]}
    assert out["test"] == {"name[C], eatType[pub]": ["C is a pub.", "The pub C."]}
    from kasa.errors import DatasetError

    with pytest.raises(DatasetError, match="lacks fields"):
        e2e_data.load_e2e_nlg("csv", data_files=files, cache_dir=str(tmp_path / "cache"), ref_field="target")


# ------------------------------------------------------------------ line breaks inside texts


def test_one_line_replaces_exactly_what_splitlines_splits():
    import sys

    for cp in range(sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        breaks = len(f"a{ch}b".splitlines()) == 2
        assert e2e.one_line(f"a{ch}b") == ("a b" if breaks else f"a{ch}b"), hex(cp)
    assert e2e.one_line("a\r\nb\n") == "a b "  # CRLF is one break, as for splitlines


BREAKS = ["\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.skipif(not e2e.java_available(), reason="java or the pycocoevalcap jars are not available")
def test_java_tokeniser_keeps_one_line_per_text_whatever_the_breaks(fixture):
    hyps, refs, _ = fixture
    texts = hyps + [r for rs in refs for r in rs]
    broken = [t.replace(" ", br, 1) for t, br in zip(texts, BREAKS * len(texts))]
    spaced = [t.replace(" ", " ", 1) for t in texts]
    assert e2e.ptb_tokenize(broken, use_java=True) == e2e.ptb_tokenize(spaced, use_java=True)


@pytest.mark.skipif(not e2e.java_available(), reason="java or the pycocoevalcap jars are not available")
def test_carriage_return_in_an_output_changes_no_official_metric(fixture):
    hyps, refs, _ = fixture
    with_cr = [hyps[0].replace(" ", "\r", 1), *hyps[1:-1], hyps[-1] + "\r"]
    with_cr_ref = [list(rs) for rs in refs]
    with_cr_ref[1][0] = with_cr_ref[1][0].replace(" ", "\u2028", 1)
    plain = [hyps[0].replace(" ", " ", 1), *hyps[1:]]
    a = e2e.e2e_metrics(with_cr, with_cr_ref, use_java=True).as_dict()
    b = e2e.e2e_metrics(plain, refs, use_java=True).as_dict()
    assert a == pytest.approx(b, abs=1e-12)


def test_tokeniser_line_count_must_be_exact(monkeypatch):
    class Out:
        stdout = "one\ntwo\nthree".encode()

    monkeypatch.setattr(e2e.subprocess, "run", lambda *a, **k: Out())
    monkeypatch.setattr(e2e, "_coco_dir", lambda: Path("/nonexistent"))
    with pytest.raises(RuntimeError, match="3 lines for 2 texts"):
        e2e._ptb_java(["one", "two"])


# ------------------------------------------------------------------ METEOR without Java

# The jar's own answers on the fixture (pycocoevalcap's meteor-1.5.jar -l en -norm, stdio mode): the SCORE
# statistics of each segment, then EVAL's segment scores and corpus score.
JAR_STATS = [
    "14.0 12.0 5.0 3.0 9.0 9.0 3.0 3.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 3.0 12.0 12.0",
    "13.0 12.0 7.0 6.0 6.0 6.0 5.0 5.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 3.0 11.0 11.0",
    "11.0 13.0 4.0 6.0 7.0 7.0 4.0 4.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 3.0 11.0 11.0",
    "12.0 12.0 3.0 5.0 5.0 5.0 1.0 1.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 2.0 1.0 0.0 2.0 4.0 8.0 9.0",
    "5.0 7.0 2.0 4.0 3.0 3.0 2.0 2.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 3.0 5.0 5.0",
]
JAR_SEGMENT = [0.5398861683632481, 0.5117168581085177, 0.5030924166797225, 0.3474885880460323, 0.39692826932653014]
JAR_CORPUS = 0.4642641620678808


def test_meteor_stats_score_and_aggregate_as_the_jar():
    """MeteorStats.score / add reproduce METEOR 1.5's computeMetrics and addStats on the jar's statistics.

    The corpus score (0.4643) is not the mean of the segment scores (0.4598): the old fallback's averaging."""
    stats = [e2e.MeteorStats.from_jar(line) for line in JAR_STATS]
    assert [s.score() for s in stats] == pytest.approx(JAR_SEGMENT, abs=1e-12)
    total = e2e.MeteorStats()
    for s in stats:
        total.add(s)
    assert total.score() == pytest.approx(JAR_CORPUS, abs=1e-12)
    assert sum(JAR_SEGMENT) / 5 != pytest.approx(JAR_CORPUS, abs=1e-3)
    # a complete one-chunk match adds no chunk to the corpus (the jar's exception), and scores 1
    same = e2e.meteor_stats("the cat sat".split(), "the cat sat".split())
    assert same.complete() and same.score() == 1.0
    total.add(same)
    assert total.chunks == sum(s.chunks for s in stats)


def test_meteor_fallback_aggregates_over_the_corpus():
    fw = frozenset()
    a = e2e.meteor_stats("a b c d".split(), "a b x c d".split(), fw)
    assert (a.test_matches, a.ref_matches, a.chunks) == (4, 4, 2)
    b = e2e.meteor_stats("e f".split(), "f e g".split(), fw)
    total = e2e.MeteorStats()
    total.add(a)
    total.add(b)
    p, r = 6 / 6, 6 / 8
    fmean = p * r / (0.85 * p + 0.15 * r)
    hand = fmean * (1 - 0.6 * (4 / 6) ** 0.2)  # 4 chunks over 6 matches
    assert total.score() == pytest.approx(hand, abs=1e-12)
    # stems match at the stem stage (weight 0.6): "serves" / "serving"
    s = e2e.meteor_stats(["serves"], ["serving"], fw)
    assert s.test_content_matches[:2] == [0.0, 1.0]
    assert s.score() == pytest.approx(0.6, abs=1e-12)
    with pytest.raises(ValueError, match="23 fields"):
        e2e.MeteorStats.from_jar("1 2 3")


def test_report_says_which_runs_have_a_non_comparable_metric(tmp_path):
    from kasa.analysis.report import report

    for seed, flagged in ((0, True), (1, False)):
        cfg = {"method": {"name": "kasa"}, "model": {"name": "gpt2-medium"}, "seed": seed,
               "dataset": {"name": "e2e_nlg", "monitor": "BLEU"}, "benchmark": {"name": "e2e", "selection": "best"},
               "study": {"table": "e2e_gpt2", "per_model": True}}
        res = {"method": "kasa", "seed": seed, "dataset": "e2e_nlg", "config": cfg,
               "metrics": {"monitor": "BLEU", "selection": "best", "reported": {"BLEU": 68.0, "METEOR": 44.0}},
               "evaluation": {"backend": "python-approx" if flagged else "official",
                              "not_comparable": {"METEOR": e2e.METEOR_FALLBACK_NOTE} if flagged else {}}}
        (tmp_path / f"r{seed}").mkdir()
        (tmp_path / f"r{seed}" / "results.json").write_text(json.dumps(res))
    md = report([tmp_path], formats=["md"])["md"]
    assert "NOT COMPARABLE with the official scorer: METEOR in 1 run(s)" in md
