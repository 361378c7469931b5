"""Caption clean-up and the label rule: every caption must contain its class label as a word sequence, with the
same matching P2P uses (digin.engine.p2p.replace_phrase: whitespace words, case-insensitive, ',' and '.' ignored);
otherwise the dataset template replaces it and the reason is recorded."""
from __future__ import annotations

import re

PUNCT = ",."  # what digin.engine.p2p strips from word ends


def _words(text: str) -> list[str]:
    return [w.strip(PUNCT).lower() for w in text.split() if w.strip(PUNCT)]


def contains_label(caption: str, label: str) -> bool:
    words, lab = _words(caption), _words(label)
    if not lab:
        return False
    n = len(lab)
    return any(words[i:i + n] == lab for i in range(len(words) - n + 1))


def clean_caption(text: str, cut_at_period: bool = True, keep_prefix: str = "") -> str:
    """Collapse whitespace; cut at the first '.' after `keep_prefix` (the reference keeps the first sentence, and
    a label such as 'St. Bernard' inside the forced prefix must survive the cut)."""
    text = "".join(ch for ch in (text or "") if ch.isprintable() or ch.isspace()).replace("\ufffd", "")
    text = re.sub(r"\s+", " ", text).strip()
    if cut_at_period:
        prefix = re.sub(r"\s+", " ", keep_prefix).strip()
        start = len(prefix) if prefix and text.startswith(prefix) else 0
        cut = text.find(".", start)
        if cut >= 0:
            text = text[:cut]
    return text.strip(" ,;:")


def enforce_label(caption: str | None, label: str, template: str) -> tuple[str, str | None]:
    """(final caption, fallback reason or None). Reasons: 'empty', 'label_missing'."""
    if caption is None or not caption.strip():
        return template.format(label=label), "empty"
    if not contains_label(caption, label):
        return template.format(label=label), "label_missing"
    return caption, None
