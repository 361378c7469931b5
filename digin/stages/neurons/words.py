"""Naming neurons: words that describe a neuron's top images (the reference's
imagenet_cog_neuron_visualisation_stage1.py).

Backends (`name_backend`):
- `given`: words from the config (`words={310: [dog, leash]}`) or a JSON file neuron → words / {word: count};
- `template`: the class labels of the top images, counted — a cheap, real baseline;
- `vlm`: asks a vision-language model for the objects in each top image through the captioning stage's hook
  `digin.caption.ask_objects(images, backend=..., **vlm_options)` (list of uint8 HWC arrays → one answer per
  image: a string in the reference's "[a, b, c]" list format, or a list of words). Imported lazily; without
  that module the backend says so. Answers are parsed with the captioning stage's `parse_object_list` when it
  has one, else like the reference but stripped (its words kept leading spaces).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

# The reference's CogAgent query (stage 1).
OBJECTS_QUESTION = ("list the most important objects in the image in a list format starting with [ and ending "
                    "with ] without a full sentence")


def parse_object_list(response) -> list[str]:
    """'[Dog, leash ,grass]' → ['dog', 'leash', 'grass']; a list passes through lower-cased; text without
    brackets is read as one comma-separated list (the reference's check for brackets was inverted)."""
    if isinstance(response, (list, tuple)):
        items = [str(w) for w in response]
    else:
        text = str(response)
        m = re.search(r"\[(.*?)\]", text, flags=re.S)
        items = (m.group(1) if m else text).split(",")
    words = [re.sub(r"\s+", " ", w).strip().strip("'\"").strip().lower() for w in items]
    return [w for w in words if w]


def vlm_parser():
    """The captioning stage's answer parser when it ships one (one parser for both stages), else ours."""
    try:
        from digin.caption import parse_object_list as theirs  # guarded: except ImportError below
    except ImportError:
        return parse_object_list
    return lambda answer: parse_object_list(answer) if isinstance(answer, (list, tuple)) else theirs(answer)


def count_words(lists) -> dict[str, int]:
    """Word → number of images naming it (a word repeated in one answer counts once), most frequent first,
    ties alphabetical."""
    c = Counter()
    for words in lists:
        c.update(set(words))
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def given_words(spec, neurons=None) -> dict[int, dict[str, int]]:
    """`spec`: dict neuron → list of words or {word: count}, or a path to such a JSON file; `neurons` restricts."""
    if isinstance(spec, (str, Path)):
        spec = json.loads(Path(spec).read_text())
    table = {int(k): v for k, v in dict(spec or {}).items()}
    out = {}
    for n in (table if neurons is None else neurons):
        v = table.get(int(n))
        if v is None:
            continue
        out[int(n)] = ({str(w).strip().lower(): int(c) for w, c in v.items()} if isinstance(v, dict)
                       else count_words([[str(w).strip().lower() for w in ([v] if isinstance(v, str) else v)]]))
    return out


def template_words(labels_per_image: list[str]) -> dict[str, int]:
    return count_words([[str(l).strip().lower()] for l in labels_per_image])


def vlm_answers(images, backend: str, options: dict | None = None):
    """One answer per image from the captioning stage's VLM hook; `options` go to ask_objects (model_path,
    device, dtype, resolution, batch_size, ...)."""
    try:
        from digin.caption import ask_objects  # guarded: except ImportError below
    except ImportError as e:
        raise SystemExit("digin neurons: name_backend=vlm needs digin.caption.ask_objects(images, backend=...) "
                         f"from the captioning stage, which is not importable here ({e}); use name_backend="
                         "template or given") from None
    answers = list(ask_objects(images, backend=backend, **dict(options or {})))
    if len(answers) != len(images):
        raise RuntimeError(f"ask_objects returned {len(answers)} answers for {len(images)} images")
    return answers


def candidate_words(counts: dict[str, int], min_count: int, max_words: int | None = None) -> list[str]:
    """Words named at least `min_count` times (stage 2's min_word_count), most frequent first."""
    words = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count]
    return words[:max_words] if max_words else words
