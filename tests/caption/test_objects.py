import pytest

from digin.caption import OBJECT_QUESTION, count_words, parse_object_list

MESSY = [
    ("[dog, grass, frisbee]", ["dog", "grass", "frisbee"]),
    ("[Dog,Grass ,  FRISBEE ]", ["dog", "grass", "frisbee"]),
    ("The objects are: [\"cat\", 'sofa', `pillow`]", ["cat", "sofa", "pillow"]),
    ("[a dog, the ball, an apple.]", ["dog", "ball", "apple"]),
    ("[1. tree\n2. Sky\n3) red  car]", ["tree", "sky", "red car"]),
    ("- apple\n- banana\n* cherry", ["apple", "banana", "cherry"]),
    ("car, road , sky", ["car", "road", "sky"]),
    ("[[ship], [sea]]", ["ship", "sea"]),
    ("[ship] and also [sea, gull]", ["ship", "sea", "gull"]),
    ("Sure! [dog, DOG, ball", ["dog", "ball"]),
    ("[hot dog; bun | mustard]", ["hot dog", "bun", "mustard"]),
    ("[ ]", []),
    ("", []),
    ("[,, ,]", []),
    ("[fiddler crab, sand]", ["fiddler crab", "sand"]),
]


@pytest.mark.parametrize("answer,expected", MESSY)
def test_parse_object_list_messy_answers(answer, expected):
    assert parse_object_list(answer) == expected


def test_count_words_counts_images_not_repeats_and_sorts():
    counts = count_words([["dog", "grass"], ["Dog", "dog", "ball"], "[grass, dog]", []])
    assert counts == {"dog": 3, "grass": 2, "ball": 1}
    assert list(counts) == ["dog", "grass", "ball"]


def test_question_is_the_reference_one():
    assert OBJECT_QUESTION.startswith("list the most important objects in the image in a list format starting "
                                      "with [ and ending with ]")
