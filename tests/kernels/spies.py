"""Shared fixture helper: count calls into Triton launchers, so a test can tell the kernel really ran."""


def spy_launchers(monkeypatch, module, fwd_name: str, bwd_name: str) -> dict:
    calls = {"fwd": 0, "bwd": 0}
    for tag, name in (("fwd", fwd_name), ("bwd", bwd_name)):
        real = getattr(module, name)

        def spy(*a, _real=real, _tag=tag, **k):
            calls[_tag] += 1
            return _real(*a, **k)

        monkeypatch.setattr(module, name, spy)
    return calls
