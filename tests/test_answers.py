"""Exact match and F1 as the SQuAD / HotpotQA evaluation scripts compute them, on a table of known cases, the
answer read from a response, and the answer-spam guard."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swepost.rewards.answers import (
    MAX_ANSWER_TAGS,
    count_answer_tags,
    exact_match,
    extract_answer,
    f1_parts,
    f1_score,
    normalize_answer,
    score_answer,
)


@pytest.mark.parametrize("text, normal", [
    ("The Eiffel Tower", "eiffel tower"),
    ("  An apple a day!  ", "apple day"),
    ("1,000", "1000"),  # punctuation is deleted, not replaced by a space
    ("don't", "dont"),
    ("U.S.A.", "usa"),
    ("theatre", "theatre"),  # an article only as a whole word
    ("Tom & Jerry", "tom jerry"),
    ("café—bar", "café—bar"),  # only ASCII punctuation goes, as in the reference scripts
    ("a", ""),
])
def test_normalisation(text, normal):
    assert normalize_answer(text) == normal


@pytest.mark.parametrize("pred, golds, em, f1", [
    ("The Eiffel Tower", ["eiffel tower"], 1.0, 1.0),
    ("Eiffel", ["Eiffel Tower"], 0.0, 2 / 3),  # precision 1, recall 1/2
    ("Barack Obama", ["Obama"], 0.0, 2 / 3),  # precision 1/2, recall 1
    ("the quick brown fox", ["quick fox jumps"], 0.0, 2 / 3),
    ("x x y", ["x y y"], 0.0, 2 / 3),  # overlap counts each token as often as both sides have it
    ("Paris France", ["London", "Paris"], 0.0, 2 / 3),  # the best gold
    ("London", ["London", "Paris"], 1.0, 1.0),
    ("yes", ["yes it is"], 0.0, 0.0),  # yes / no / noanswer: no partial credit
    ("no one", ["no"], 0.0, 0.0),
    ("No.", ["no"], 1.0, 1.0),
    ("noanswer", ["noanswer"], 1.0, 1.0),
    ("Yes", ["no"], 0.0, 0.0),
    ("4", ["four", "4"], 1.0, 1.0),
    ("1,000 people", ["1000"], 0.0, 2 / 3),
    ("Berlin", ["Bonn"], 0.0, 0.0),
])
def test_known_cases(pred, golds, em, f1):
    assert exact_match(pred, golds) == em
    assert f1_score(pred, golds) == pytest.approx(f1)


def test_f1_parts_are_precision_and_recall():
    assert f1_parts("Barack Obama", "Obama") == pytest.approx((2 / 3, 0.5, 1.0))


def test_no_golds_is_an_error_not_a_zero():
    with pytest.raises(ValueError):
        exact_match("x", [])
    with pytest.raises(ValueError):
        score_answer("x", [])


@given(st.text(max_size=40), st.lists(st.text(max_size=40), min_size=1, max_size=3))
def test_an_exact_match_has_full_f1(pred, golds):
    if exact_match(pred, golds) and normalize_answer(pred):
        assert f1_score(pred, golds) == pytest.approx(1.0)
    assert 0.0 <= f1_score(pred, golds) <= 1.0


def test_the_answer_is_the_last_tag_of_the_response():
    text = "I think <answer>Bonn</answer>; no wait.\n<ANSWER>\n Berlin \n</ANSWER> done"
    assert extract_answer(text) == "Berlin"
    assert count_answer_tags(text) == 2
    assert extract_answer("no tag here") is None
    assert extract_answer("<answer>unclosed") is None
    assert extract_answer("") is None and extract_answer(None) is None


def test_score_answer_and_the_spam_guard():
    right = score_answer("The Berlin", ["Berlin"])
    assert right == {"em": 1.0, "f1": 1.0, "reward": 1.0, "missing_answer": False, "spam": False}
    assert score_answer("Berlin", ["Berlin"], answer_count=MAX_ANSWER_TAGS)["reward"] == 1.0
    spam = score_answer("Berlin", ["Berlin"], answer_count=MAX_ANSWER_TAGS + 1)
    assert spam["reward"] == 0.25 and spam["spam"] and spam["em"] == 1.0
    assert score_answer("Barack Obama", ["Obama"], metric="f1")["reward"] == pytest.approx(2 / 3)
    for missing in (None, "", "   "):
        assert score_answer(missing, ["Berlin"]) == {"em": 0.0, "f1": 0.0, "reward": 0.0, "missing_answer": True,
                                                     "spam": False}
