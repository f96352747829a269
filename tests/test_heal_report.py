"""experiments.heal --report: every arm gets its own curve in heal.png, one panel per student and budget."""
import json

from experiments import heal


def test_report_keeps_one_curve_per_token_budget(tmp_path, monkeypatch):
    """Two token budgets of the same (student, budget, heal) arm are two curves, not one overwriting the other."""
    def final(nll):
        return {"ppl": 2.718281828 ** nll, "nll": nll, "ci95": [1.0, 2.0], "params": 100, "window_nll": [nll, nll]}

    stamp = {"commit": "c0ffee" * 7, "machine": "m", "python": "3", "jax": "0", "command": "c"}
    rows = [{"student": "dense", "budget": None, "heal": "none", "tokens": 0, "final": final(3.0), **stamp},
            {"student": "prune", "budget": 0.2, "heal": "none", "tokens": 0, "final": final(4.0), **stamp}]
    for asked, got in ((50000, 50176), (200000, 200704)):
        rows.append({"student": "prune", "budget": 0.2, "heal": "ce", "tokens": got, "tokens_asked": asked,
                     "final": final(3.8), "curve": [{"tokens": got, "ppl": 45.0}], **stamp})
    (tmp_path / "heal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(heal, "ROWS", tmp_path / "heal.jsonl")
    monkeypatch.setattr(heal, "RESULTS", tmp_path)
    seen = {}
    from jaxshare import plots

    monkeypatch.setattr(plots, "curve_panels", lambda panels, *a, **k: seen.update(panels, style=k["style"]))
    heal.report()
    assert set(seen["prune -20%"]) == {"ce 50k", "ce 200k"}
    assert seen["prune -20%"]["ce 200k"] == ([0, 200.704], [2.718281828 ** 4.0, 45.0])
    # one loss, one colour; the longer budget dashed
    assert seen["style"]["ce 50k"]["color"] == seen["style"]["ce 200k"]["color"]
    assert (seen["style"]["ce 50k"]["linestyle"], seen["style"]["ce 200k"]["linestyle"]) == ("-", "--")
    md = (tmp_path / "heal.md").read_text()
    assert "| ce | 200704 |" in md and "- prune -20% ce: 200704 tokens" in md


def test_curve_panels_writes_a_png(tmp_path):
    from jaxshare import plots

    path = plots.curve_panels({"a": {"x": ([0, 1], [10.0, 5.0])}, "b": {"x": ([0, 1], [1e9, 100.0])}},
                              tmp_path / "p.png", "t", "x", "y", style={"x": {"color": "red"}}, hline=(3.0, "ref"))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_compares_each_heal_with_the_dense_control(tmp_path, monkeypatch):
    """The dense model trained with ce on the same tokens is the control: each healed arm is paired
    against it and its curve is drawn in every panel."""
    def final(nll):
        return {"ppl": 2.718281828 ** nll, "nll": nll, "ci95": [1.0, 2.0], "params": 100,
                "window_nll": [nll - 0.1, nll + 0.1]}

    stamp = {"commit": "c0ffee" * 7, "machine": "m", "python": "3", "jax": "0", "command": "c"}
    rows = [{"student": "dense", "budget": None, "heal": "none", "tokens": 0, "final": final(3.0), **stamp},
            {"student": "dense", "budget": None, "heal": "ce", "tokens": 50176, "tokens_asked": 50000,
             "final": final(2.8), "curve": [{"tokens": 50176, "ppl": 16.4}], **stamp},
            {"student": "prune", "budget": 0.2, "heal": "none", "tokens": 0, "final": final(4.0), **stamp},
            {"student": "prune", "budget": 0.2, "heal": "ce", "tokens": 50176, "tokens_asked": 50000,
             "final": final(3.4), "curve": [{"tokens": 50176, "ppl": 30.0}], **stamp}]
    (tmp_path / "heal_books.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(heal, "RESULTS", tmp_path)
    seen = {}
    from jaxshare import plots

    monkeypatch.setattr(plots, "curve_panels", lambda panels, *a, **k: seen.update(panels, style=k["style"]))
    heal.report("books")
    assert set(seen["prune -20%"]) == {"ce 50k", "dense ce 50k"} and seen["style"]["dense ce 50k"]["linestyle"] == ":"
    md = (tmp_path / "heal_books.md").read_text()
    assert "healed at equal tokens of books:train; held-out: books:test" in md
    assert "- dense + ce, 50176 tokens (the control): 16.44" in md and "-0.2000 nats per token" in md
    # (4.0 - 3.4) / (4.0 - 2.8) of the gap to the trained dense model
    assert "- prune -20% ce 29.96 - control = +0.6000 nats per token" in md and "against the control 50.0%" in md
    assert "| dense |" not in md  # the control is not a student row
