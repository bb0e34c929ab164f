"""The VADER and sarcasm sources: the packaged files hold the counts their papers and packages give; the SST-2 dev
sentences stay out of training; bad files are one line naming the file."""

from __future__ import annotations

from collections import Counter

import pytest

from kasa import assets
from kasa.errors import DatasetError
from kasa.tasks.classification.data import load_splits
from kasa.tasks.classification.glue import packaged_dev
from kasa.tasks.classification.packaged import VADER_SETS, normalise, read_vader, vader_label


def test_packaged_vader_sets_have_their_published_sizes():
    sizes = {k: len(read_vader(assets.vader_dir() / f"{v}_GroundTruth.txt")) for k, v in VADER_SETS.items()}
    assert sizes == {"movie": 10_605, "tweets": 4_200, "nyt": 5_190, "amazon": 3_708}


def test_vader_movie5_is_sst5_like_and_split_fixed():
    s = load_splits("vader", subset="movie", classes=5)
    assert (len(s.train), len(s.validation)) == (8_482, 2_121)  # 10,603 distinct snippets, 80/20 per class
    counts = Counter(e.label for e in s.train + s.validation)
    assert sorted(counts) == [0, 1, 2, 3, 4] and max(counts.values()) / sum(counts.values()) < 0.36
    again = load_splits("vader", subset="movie", classes=5, max_train=100, max_validation=50)
    assert {e.text for e in again.train} <= {e.text for e in s.train} and len(again.validation) == 50
    assert not {e.text for e in s.train} & {e.text for e in s.validation}


def test_sst2_style_training_leaves_out_the_sst2_dev_sentences():
    dev = packaged_dev("sst2")
    assert len(dev) == 872 and Counter(e.label for e in dev) == {1: 444, 0: 428}
    movie = {normalise(t) for t, _ in read_vader(assets.vader_dir() / "movieReviewSnippets_GroundTruth.txt")}
    assert len({normalise(e.text) for e in dev} & movie) == 732
    s = load_splits("vader", subset="movie", classes=2, validation="sst2")
    assert s.validation == dev and s.label_names == ["negative", "positive"]
    assert not {normalise(e.text) for e in s.train} & {normalise(e.text) for e in dev}


def test_packaged_sarcasm_headlines():
    lines = assets.sarcasm_file().read_text(encoding="utf-8").splitlines()
    assert len(lines) == 28_614
    s = load_splits("sarcasm")
    assert len(s.train) + len(s.validation) == 28_498  # distinct headlines
    assert set(Counter(e.label for e in s.validation)) == {0, 1}


@pytest.mark.parametrize("rating,classes,label", [(-4.0, 5, 0), (-2.4, 5, 0), (-2.39, 5, 1), (0.8, 5, 2), (0.81, 5, 3),
                                                  (4.0, 5, 4), (0.0, 3, 1), (-1.0, 2, 0), (0.5, 2, None), (1.0, 2, 1)])
def test_sst_cut_points(rating, classes, label):
    assert vader_label(rating, classes) == label


def test_bad_vader_input_is_one_line(tmp_path):
    bad = tmp_path / "x_GroundTruth.txt"
    bad.write_text("1\t2.0\tfine\n2\tnot-a-number\ttext\n")
    with pytest.raises(DatasetError, match=r"x_GroundTruth.txt:2: expected"):
        load_splits("vader", path=str(bad))
    with pytest.raises(DatasetError, match="does not exist"):
        load_splits("vader", path=str(tmp_path / "missing.txt"))
    with pytest.raises(DatasetError, match="subset='films'"):
        load_splits("vader", subset="films")
    with pytest.raises(DatasetError, match="classes=2"):
        load_splits("vader", validation="sst2")
