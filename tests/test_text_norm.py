"""Numbers, ordinals and symbols are spoken as words (omni.text_norm); what has no reading is reported."""
import pytest

from omni.text_norm import cardinal, ordinal, spoken_form, unsayable
from omni.vocab import TextVocab


@pytest.mark.parametrize("n, words", [(0, "zero"), (13, "thirteen"), (40, "forty"), (105, "one hundred five"),
                                      (2024, "two thousand twenty four"),
                                      (1_000_001, "one million one")])
def test_cardinal(n, words):
    assert cardinal(n) == words


@pytest.mark.parametrize("n, words", [(1, "first"), (2, "second"), (12, "twelfth"), (21, "twenty first"),
                                      (40, "fortieth"), (100, "one hundredth")])
def test_ordinal(n, words):
    assert ordinal(n) == words


@pytest.mark.parametrize("text, spoken", [
    ("I have 3 cats", "I have three cats"),
    ("it costs $4.50", "it costs four dollars fifty cents"),
    ("£1", "one pound"),
    ("at 3:05, not 10:00", "at three oh five, not ten o'clock"),
    ("pi is 3.14", "pi is three point one four"),
    ("the 2nd and 21st", "the second and twenty first"),
    ("1,234 people", "one thousand two hundred thirty four people"),
    ("the 1,000th time at 20°C", "the one thousandth time at twenty degrees C"),
    ("50% & 7+5=12", "fifty percent and seven plus five equals twelve"),
    ("agent 007", "agent zero zero seven"),
    ("twenty-one", "twenty one"),
    ("no numbers here.", "no numbers here."),
])
def test_spoken_form(text, spoken):
    assert spoken_form(text) == spoken


def test_unsayable_names_what_no_word_reads():
    assert unsayable("hi there, 123!") == ""
    assert unsayable("hi 🙂 #1 ^_^") == "^_🙂"


def test_the_talker_reads_numbers_instead_of_dropping_them():
    v = TextVocab.from_texts(["the quick brown fox jumps over the lazy dog"])
    assert TextVocab.spoken("Room 12!") == "room twelve"
    assert v.encode("3 dogs") == v.encode("three dogs")
    assert len(v.encode("123")) > 2   # not an empty utterance
