"""VLM object naming for neurons (the reference's imagenet_cog_neuron_*_stage1.py: CogAgent lists the objects of a
neuron's top images): the question, a tolerant parser for list answers, word counts."""
from __future__ import annotations

import re
from collections import Counter

OBJECT_QUESTION = ("list the most important objects in the image in a list format starting with [ and ending "
                   "with ] without a full sentence")

_SPLIT = re.compile(r"[,;\n|]+|\s+-\s+")
_ENUM = re.compile(r"^\s*(?:[-*•]+|\(?\d+[.)]|\(?[a-z][)])\s+")  # "- x", "* x", "1. x", "2) x", "a) x"
_ARTICLE = re.compile(r"^(?:a|an|the)\s+")
_EDGE = "\"'`“”‘’.:!?()[]{}<>*_ \t"


def _list_body(answer: str) -> str:
    """Text of every [...] group (nested brackets flattened); an unclosed '[' runs to the end; no '[' = all."""
    groups = re.findall(r"\[([^\[\]]*)\]", answer)
    if groups:
        inner = [g for g in groups if g.strip()]
        return ",".join(inner)
    if "[" in answer:
        return answer[answer.index("[") + 1:]
    return answer.replace("]", ",")


def parse_object_list(answer: str) -> list[str]:
    """Object names from a VLM answer such as "[Dog, 'grass' , a Frisbee.]" -> ['dog', 'grass', 'frisbee'].

    Lower-cased, stripped of quotes/brackets/enumeration/leading articles, whitespace collapsed, de-duplicated
    in order of appearance (so counting across images counts images, not repeats)."""
    if not answer:
        return []
    body = _list_body(answer.replace("[[", "[").replace("]]", "]"))
    out: list[str] = []
    for part in _SPLIT.split(body):
        w = _ENUM.sub("", part.strip())
        w = re.sub(r"\s+", " ", w).strip(_EDGE).lower()
        w = _ARTICLE.sub("", w).strip(_EDGE)
        if w and w not in out and any(c.isalnum() for c in w):
            out.append(w)
    return out


def count_words(list_of_lists) -> dict:
    """word -> number of lists naming it, most frequent first (ties: alphabetical). Strings are parsed first."""
    c = Counter()
    for words in list_of_lists:
        if isinstance(words, str):
            words = parse_object_list(words)
        c.update(list(dict.fromkeys(w.strip().lower() for w in words if w and w.strip())))
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))
