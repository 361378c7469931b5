from digin.caption import clean_caption, contains_label, enforce_label, label_of, template_for


def test_contains_label_matches_word_sequences_like_p2p():
    assert contains_label("an image of a Great White Shark, swimming", "great white shark")
    assert contains_label("a hot dog.", "hot dog")
    assert not contains_label("an image of a catfish", "cat")      # words, not substrings
    assert not contains_label("a white great shark", "great white shark")
    assert not contains_label("anything", "")


def test_enforce_label_falls_back_with_reason():
    tpl = template_for("cub")
    assert tpl == "an image of a {label} macro shot close-up"
    assert enforce_label("a bird on a branch", "Painted Bunting", tpl) == (
        "an image of a Painted Bunting macro shot close-up", "label_missing")
    assert enforce_label("  ", "cat", template_for("imagenet")) == ("an image of a cat on background", "empty")
    assert enforce_label(None, "cat", tpl)[1] == "empty"
    assert enforce_label("a cat on a mat", "cat", tpl) == ("a cat on a mat", None)


def test_clean_caption_cuts_first_period_after_prefix():
    assert clean_caption("an image of a cat  sitting on a mat. Another one.") == "an image of a cat sitting on a mat"
    p = "an image of a St. Bernard "
    assert clean_caption(p + "in snow. more", keep_prefix=p) == "an image of a St. Bernard in snow"
    assert clean_caption("a cat\x10 \ufffd on\n mat") == "a cat on mat"


def test_label_of_uses_label_name_first_synonym():
    assert label_of({"meta": {"label": 3, "label_name": "tench, Tinca tinca"}}) == "tench"
    assert label_of({"label": 5}) == "5"
