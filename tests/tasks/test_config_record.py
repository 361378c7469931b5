"""Every config key that changes results is in the config a stage records (and resumes against), for every task
and every neuron mode: each such key, changed on its own, changes the record the task's real spec builds — the
runner then refuses to resume (config hash) — and no operational key is recorded. The record comes from the
fields' metadata (digin.fields), never from a hand list."""
import copy
import typing

import pytest

from digin.cli import build_config
from digin.fields import Leaf, leaves, recorded
from digin.shards.manifest import config_differences
from digin.stages.models import stage_compute

ABSENT = object()


def lookup(d, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return ABSENT
        d = d[part]
    return d


def candidates(lf: Leaf):
    """Other values for a key, most plausible first (build_spec may refuse some: the next one is tried)."""
    m, v = lf.meta, lf.value
    hint = typing.get_type_hints(lf.owner).get(lf.field.name)
    args = typing.get_args(hint) or (hint,)
    if m.choices:
        return [c for c in m.choices if c != v]
    if isinstance(v, bool) or bool in args:
        return [not v] if v is not None else [True, False]
    if isinstance(v, int) or int in args:
        base = 0 if v is None else v
        lo = m.rule.lo if m.rule is not None and m.rule.lo is not None else 0
        step = m.rule.multiple_of if m.rule is not None and m.rule.multiple_of else 1
        return [c for c in (base + step, base - step, int(lo)) if c != v and not (m.rule and m.rule.problem(c))]
    if isinstance(v, float) or float in args:
        base = 0.5 if v is None else v
        return [c for c in (base / 2, base + 0.25, base - 0.25, 0.5) if c != v and not (m.rule and m.rule.problem(c))]
    if isinstance(v, list) or list in args:
        return [(list(v) + list(v[-1:])) if v else [1], ["threshold_0.2"], [[0, 1]]]
    if isinstance(v, dict) or dict in args:
        return [{**(v or {}), "cat": ["kitten"]}]
    return [f"{v}_changed" if v else "changed"]


def set_key(cfg, dotted: str, value):
    *parents, name = dotted.split(".")
    holder = cfg
    for p in parents:
        holder = getattr(holder, p)
    setattr(holder, name, value)


def check_record(cfg, record_of_cfg):
    """record_of_cfg(cfg) → the record the task's spec builds. Every recorded key: present with its value, and
    each change that the spec accepts changes the record; every other key: absent."""
    base = record_of_cfg(cfg)
    changed, tried = [], []
    for lf in leaves(cfg):
        top = lf.name.split(".")[0]
        field = type(cfg).__dataclass_fields__[top]
        in_record = recorded(cfg, field) and (lf.name == top or lf.meta.results)
        if not in_record:
            assert lookup(base, lf.name) is ABSENT, f"{lf.name} (operational) is in the record"
            continue
        assert lookup(base, lf.name) is not ABSENT, f"{lf.name} changes results but is not in the record"
        values = candidates(lf)
        if not values:  # the key's rule allows one value only (optim_params.solver_order)
            continue
        for value in values:
            mutated = copy.deepcopy(cfg)
            set_key(mutated, lf.name, value)
            try:
                rec = record_of_cfg(mutated)
            except (SystemExit, Exception) as e:  # the spec refuses this value: try another
                tried.append((lf.name, value, str(e)[:80]))
                continue
            if config_differences(base, rec):  # (a compute key set to what the preset resolves to: no change)
                changed.append(lf.name)
                break
            tried.append((lf.name, value, "record unchanged"))
        else:  # no value changed the record: a failure unless this machine refuses some value (xformers: CUDA)
            mine = [t for t in tried if t[0] == lf.name]
            if all(t[2] == "record unchanged" for t in mine):
                pytest.fail(f"no change of {lf.name} changes the record: {mine}")
    return changed


def _spec_record(task_module):
    def of(cfg):  # compute keys are recorded as this device resolves them
        return task_module.build_spec(cfg, stage_compute(cfg, "cpu")).record
    return of


@pytest.fixture(scope="module")
def inputs(small_pipeline):
    return small_pipeline


def _cfg(cls, args):
    return build_config(cls, args + ["device=cpu"])


def test_uvce_diff_invert_segment_caption_record_every_key_that_changes_results(inputs):
    from digin.tasks import caption, diff, invert, segment, uvce

    p = inputs
    model = [f"model_path={p['sd']}", "resolution=32", "num_ddim_steps=4"]
    cases = {
        uvce: _cfg(uvce.Config, model + [f"images={p['images']}", f"inversions={p['inv']}", "out=o",
                                         f"classifier=tiny:{p['clf']}", "pairs=all_classes"]),
        diff: _cfg(diff.Config, model + ["out=o", f"classifier1=tiny:{p['clf']}", "class_names=[cat,dog,fox]",
                                         "num_images=1"]),
        invert: _cfg(invert.Config, model + [f"inputs={p['images']}", "out=o"]),
        segment: _cfg(segment.Config, model + [f"images={p['images']}", f"inversions={p['inv']}", "out=o"]),
    }
    for mod, cfg in cases.items():
        changed = check_record(cfg, _spec_record(mod))
        assert len(changed) >= 10, (mod.__name__, changed)
    for backend in ("template", "hf", "import"):
        cfg = _cfg(caption.Config, [f"inputs={p['images']}", "out=o", f"backend={backend}", "import_dir=x"])
        check_record(cfg, lambda c: caption.build_spec(c).record)


def test_every_neuron_mode_records_every_key_that_changes_results(inputs, tmp_path):
    from digin.stages.neurons import modes as M
    from digin.stages.neurons import spurious, vlm_check
    from digin.tasks import neurons

    p = inputs
    common = ["out=" + str(tmp_path), f"classifier=tiny:{p['clf']}", "random_weights=true"]
    model = [f"model_path={p['sd']}", "resolution=32", "num_ddim_steps=4"]
    ranked = {0: [("cat", 1.0)], 1: [("dog", 0.5)]}
    cfg = _cfg(neurons.Config, common + model + ["mode=visualise"])
    settings = stage_compute(cfg, "cpu")
    assert len(check_record(cfg, lambda c: M.visualise_spec(c, ranked, stage_compute(c, "cpu")).record)) >= 20

    cfg = _cfg(neurons.Config, common + model + ["mode=counterfactuals", f"images={p['images']}",
                                                 f"inversions={p['inv']}", "pairs=[[0,1]]"])
    check_record(cfg, lambda c: M.counterfactual_spec(c, stage_compute(c, "cpu"))[0].record)

    cfg = _cfg(neurons.Config, common + model + ["mode=spurious", "pairs=[[0,1]]", "class_names=[cat,dog,fox]"])
    check_record(cfg, lambda c: spurious.spurious_spec(c, stage_compute(c, "cpu"))[0].record)

    cfg = _cfg(neurons.Config, common + ["mode=spurious_check", f"images={p['images']}"])
    check_record(cfg, lambda c: vlm_check.check_spec(c).record)

    # activations and similar hash `record(cfg, ...)` into their result files (a changed key recomputes them)
    from digin.stages.args import record

    for mode, extra in (("activations", [f"images={p['images']}"]), ("similar", [])):
        cfg = _cfg(neurons.Config, common + [f"mode={mode}", *extra])
        check_record(cfg, lambda c: record(c, f"neurons_{mode}", stage_compute(c, "cpu")))

    # the word search's cached ranking: its record holds the search keys, and visualise shares it
    cfg = _cfg(neurons.Config, common + model + ["mode=search"])
    check_record(cfg, lambda c: M._search_config(c, stage_compute(c, "cpu")))
    vis = _cfg(neurons.Config, common + model + ["mode=visualise", "num_images=3"])
    assert M._search_config(vis, settings) == M._search_config(cfg, settings)


def test_a_resume_with_a_changed_recorded_key_is_refused_by_the_runner(inputs, tmp_path):
    """The same check through the runner's manifest: a visualise-style `solver` change (once missing from the
    neuron record) is refused; an operational change (progress) is not."""
    from digin.shards.manifest import ConfigMismatch
    from digin.tasks import diff

    p = inputs
    args = [f"model_path={p['sd']}", "resolution=32", "num_ddim_steps=2", f"out={tmp_path / 'd'}",
            f"classifier1=tiny:{p['clf']}", "class_names=[cat]", "num_images=1", "random_weights=true",
            "optim_params.sgd_steps=0", "optim_params.loss_steps=1", "augmentation_num_cutouts=0"]

    def run(extra):
        cfg = _cfg(diff.Config, args + extra)
        return diff.run(cfg)

    assert run([]) == 0
    assert run(["progress=false"]) == 0  # operational: resumes (nothing to do)
    with pytest.raises((ConfigMismatch, SystemExit)) as e:
        run(["solver=euler"])
    assert "solver" in str(e.value)
