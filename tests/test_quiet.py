"""Third-party warnings stay off the terminal in a CLI run and reach the rank's log once each (digin.quiet)."""
import importlib.util
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path


from digin import quiet

ROOT = Path(__file__).resolve().parents[1]


def _code_in(module_name: str, body: str):
    """Functions whose frames belong to `module_name` (a stand-in for a third-party module, or a digin one)."""
    ns = {"__name__": module_name, "warnings": warnings, "logging": logging}
    exec(compile(body, f"/site-packages/{module_name.replace('.', '/')}.py", "exec"), ns)
    return ns


THIRD_PARTY = _code_in("fakelib.core", """
def warn(text):
    warnings.warn(text, UserWarning)

def log(name, text):
    logging.getLogger(name).warning(text)
""")
DIGIN_CODE = _code_in("digin.fake_module", """
def warn(text):
    warnings.warn(text, UserWarning)
""")


def test_third_party_messages_wait_for_the_log_then_go_there_once(capsys, caplog):
    own = logging.getLogger("fakelib_with_handler")  # a library with its own stderr handler, like diffusers
    handler = logging.StreamHandler(sys.stderr)
    own.addHandler(handler)
    own.propagate = False
    events = []
    try:
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            with quiet.third_party_to_log():
                THIRD_PARTY["warn"]("fakelib: this API is deprecated")
                THIRD_PARTY["log"]("fakelib.loader", "pip install fakelib-accel for speed")
                THIRD_PARTY["log"]("fakelib_with_handler.sub", "kept in float32")
                DIGIN_CODE["warn"]("digin: its own warning stays visible")
                assert events == []  # no log open yet: pending
                quiet.attach_log(lambda kind, **f: events.append((kind, f)))
                for _ in range(3):  # repeats reach the same log once
                    THIRD_PARTY["warn"]("fakelib: this API is deprecated")
                    THIRD_PARTY["log"]("fakelib.loader", "pip install fakelib-accel for speed")
                THIRD_PARTY["log"]("fakelib.loader", "a new hint")
                quiet.detach_log(events.append)  # not the attached sink: no effect
        out, err = capsys.readouterr()
        assert "fakelib" not in out + err + caplog.text and "float32" not in err
        assert [str(w.message) for w in shown] == ["digin: its own warning stays visible"]
        assert all(kind == quiet.EVENT for kind, _ in events)
        messages = [f["message"] for _, f in events]
        assert sorted(messages) == sorted(["fakelib: this API is deprecated", "pip install fakelib-accel for speed",
                                           "kept in float32", "a new hint"])
        warned = next(f for _, f in events if f["source"] == "warnings")
        assert warned["category"] == "UserWarning" and "fakelib/core.py" in warned["where"]
        # everything is back as it was
        assert handler.filters == [] and not any(isinstance(h, quiet._RootCatcher) for h in logging.root.handlers)
        assert not any(isinstance(f, quiet._AfterImport) for f in sys.meta_path)
        own.warning("after the run: printed again")
        assert "after the run" in capsys.readouterr().err
    finally:
        own.removeHandler(handler)


def test_torch_and_transformers_loggers_are_diverted(capsys):
    """torch.compile (torch._dynamo) and transformers print through their own stderr handlers: diverted too."""
    from transformers.utils import logging as tlog

    events = []
    with quiet.third_party_to_log():
        quiet.attach_log(lambda kind, **f: events.append(f["message"]))
        logging.getLogger("torch._dynamo.convert_frame").warning("torch._dynamo hit config.recompile_limit (8)")
        tlog.get_logger("transformers.modeling_utils").warning("Some weights were not initialized")
    assert capsys.readouterr().err == ""
    assert events == ["torch._dynamo hit config.recompile_limit (8)", "Some weights were not initialized"]
    logging.getLogger("torch._dynamo.convert_frame").warning("outside: printed")
    assert "outside: printed" in capsys.readouterr().err


def test_messages_no_log_received_are_counted_at_the_end(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with quiet.third_party_to_log():
            THIRD_PARTY["warn"]("fakelib: one")
            THIRD_PARTY["warn"]("fakelib: two")
    err = capsys.readouterr().err
    assert "fakelib" not in err and "2 third-party warning(s) hidden (verbose=true shows them)" in err


def test_verbose_leaves_third_party_output_alone(caplog):
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with quiet.third_party_to_log(enabled=False):
            THIRD_PARTY["warn"]("fakelib: visible")
            THIRD_PARTY["log"]("fakelib.loader", "visible hint")
    assert [str(w.message) for w in shown] == ["fakelib: visible"]
    assert "visible hint" in caplog.text  # reached the root logger's handlers as usual


def test_a_library_imported_during_the_run_is_quieted(tmp_path, monkeypatch, capsys):
    """Handlers a watched package adds at import time (diffusers, transformers, torch) are diverted at once."""
    pkg = tmp_path / "fakewatched"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import logging, sys\n"
                                     "log = logging.getLogger('fakewatched')\n"
                                     "log.addHandler(logging.StreamHandler(sys.stderr))\n"
                                     "log.propagate = False\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(quiet, "WATCHED_PACKAGES", quiet.WATCHED_PACKAGES | {"fakewatched"})
    events = []
    try:
        with quiet.third_party_to_log():
            quiet.attach_log(lambda kind, **f: events.append(f))
            import fakewatched

            assert fakewatched.__spec__.loader.__class__.__name__ == "SourceFileLoader"  # wrapper gone again
            fakewatched.log.warning("library hint at run time")
    finally:
        sys.modules.pop("fakewatched", None)
    assert "library hint" not in capsys.readouterr().err
    assert [e["message"] for e in events] == ["library hint at run time"]


def test_tiny_stage_run_prints_no_third_party_text_and_logs_it(tmp_path, tiny_sd_dir):
    """A real `digin invert` in a fresh interpreter: diffusers' hints go to the rank log, not the terminal."""
    from digin.shards.convert import convert
    from digin.shards.synthetic import make_image_folder

    make_image_folder(tmp_path / "raw", classes=["cat", "dog"], n_per_class=1, size=32, seed=0)
    convert("imagefolder", tmp_path / "raw", "val", tmp_path / "images", name="t", samples_per_shard=2,
            progress=False)
    cmd = [sys.executable, "-m", "digin.cli", "invert", f"inputs={tmp_path / 'images'}", f"out={tmp_path / 'inv'}",
           f"model_path={tiny_sd_dir}", "resolution=32", "num_ddim_steps=2", "method=negative_prompt",
           "batch_size=2", "device=cpu"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    terminal = run.stdout + run.stderr
    assert "[invert] rank 0: processed 2" in terminal  # digin's own summary stays
    for text in ("accelerate", "Warning", "warn(", "FutureWarning", "DeprecationWarning"):
        assert text not in terminal, terminal
    log = next((tmp_path / "inv" / "logs").glob("*.jsonl"))
    events = [json.loads(line) for line in log.read_text().splitlines()]
    third = [e for e in events if e["event"] == quiet.EVENT]
    assert len({(e["source"], e["message"]) for e in third}) == len(third)  # once each
    if importlib.util.find_spec("accelerate") is None:  # diffusers then hints at it once per component load
        assert [e for e in third if "pip install accelerate" in e["message"]]
