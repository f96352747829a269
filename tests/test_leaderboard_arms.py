"""experiments.leaderboard: healed arms (STUDENT+HEAL) through --checkpoints, and their table."""
import json
import subprocess

import pytest

from benchmarks import experiment_tables
from benchmarks.common import made_at
from experiments import leaderboard as lb


def test_healed_arm_names():
    assert lb.healed("prune-mlp+ce") == ("prune-mlp", "ce")
    assert lb.healed("plan+kd+lora") == ("plan", "kd+lora")
    assert lb.healed("plan+kd+ce") == ("plan", "kd+ce")
    assert lb.healed("plan") == ("plan", None)
    assert lb.healed("prune-mlp+kv") is None  # an ordinary arm, not a heal
    assert lb.healed("directshare+postshare") is None
    assert lb.healed("prune+ce") is None  # heal.py's `prune` is the leaderboard's prune-mlp
    # each healed arm sorts right after its unhealed student
    assert lb.arm_order("prune-mlp") < lb.arm_order("prune-mlp+ce") < lb.arm_order("prune-mlp+kd") < lb.arm_order("prune-mlp+kv")


def test_checkpoints_keep_repeated_arms_in_order():
    got = lb.parse_checkpoints("prune-mlp+ce=runs/a/final,prune-mlp+ce=runs/b/final")
    assert got == [("prune-mlp+ce", "runs/a/final"), ("prune-mlp+ce", "runs/b/final")]


def test_checkpoint_heal_comes_from_result_json(tmp_path):
    (tmp_path / "final").mkdir()
    (tmp_path / "result.json").write_text(json.dumps({"mode": "plain", "tokens": 50176, "adapter_params": 0}))
    with pytest.raises(SystemExit, match="records no commit that made it"):  # who made it, from what code?
        lb.checkpoint_how("plan+ce", str(tmp_path / "final"), 30)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=lb.ROOT, capture_output=True, text=True).stdout.strip()
    made_at(tmp_path).write_text(json.dumps({"commit": head, "dirty": False}))  # as experiments.heal leaves it
    how = lb.checkpoint_how("plan+ce", str(tmp_path / "final"), 30)
    assert how["trained_tokens"] == 50176 and how["heal"] == "ce" and how["student"] == "plan"
    assert how["train_data"] == "wiki:train"
    assert lb.checkpoint_how("plan+ce", str(tmp_path / "final"), 30, "books")["train_data"] == "books:train"
    with pytest.raises(SystemExit, match="healed with ce, not kd"):
        lb.checkpoint_how("plan+kd", str(tmp_path / "final"), 30)
    # KD with label cross-entropy mixed in is told apart from pure KD by the recipe's loss
    loss = " * tau^2 * KL(teacher || student) at tau 1.0"
    for heal, text in (("kd+ce", "(1 - 0.5)" + loss + " + 0.5 * CE"), ("kd", "(1 - 0.0)" + loss)):
        (tmp_path / "result.json").write_text(json.dumps({"mode": "heal", "tokens": 200704, "adapter_params": 0,
                                                          "recipe": {"loss": text}}))
        assert lb.checkpoint_how(f"plan+{heal}", str(tmp_path / "final"), 30)["heal"] == heal


def test_healed_table_compares_with_the_grid():
    def row(arm, ppl, how):
        return {"arm": arm, "budget": 0.2, "removed": 0.2, "params": 107.6e6, "how": how,
                "ppl": {"wiki:test": ppl, "canterbury": ppl}}

    grid = [row("basis", 177.0, {}), row("svd-llm", 175.0, {})]
    heals = [row("plan+ce", 50.0, {"checkpoint": "x", "trained_tokens": 50176}),
             row("plan", 70.0, {"checkpoint": "y"})]
    text = experiment_tables.healed_table(heals, grid)
    assert "| budgeted plan (not healed) | −20% |" in text and "| budgeted plan + CE | −20% |" in text
    assert text.index("(not healed)") < text.index("+ CE")
    assert "budgeted plan + CE (50,176 tokens) 50.00, 3.5× lower than the grid's SVD-LLM (175.00)" in text


def test_books_table_claims_a_win_only_outside_the_intervals():
    def row(arm, budget, nll, **how):
        import math

        import numpy as np

        nll = np.asarray(nll, dtype=float)
        return {"arm": arm, "budget": budget, "removed": budget, "params": 1e8, "how": how, "data": "books",
                "windows": len(nll), "seq_len": 512, "ppl": {"books:test": math.exp(nll.mean())},
                "ci95": {"books:test": [math.exp(nll.min()), math.exp(nll.max())]},
                "window_nll": {"books:test": nll.tolist()}}

    base = [3.0, 3.2, 3.4, 3.6]
    rows = [row("dense", 0.0, base),
            row("basis", 0.1, [x + 1.0 for x in base]), row("svd-llm", 0.1, [x + 2.0 for x in base]),
            row("basis", 0.2, [x + 1.0 for x in base]), row("svd-llm", 0.2, [x + 1.02 for x in base]),
            row("magnitude", 0.2, [x + 0.1 for x in base])]
    text = experiment_tables.leaderboard_books(rows)
    assert "| Basis Sharing n=2 | **" in text and "| SVD-LLM | " in text
    at10, at20 = text.split("at −10% ")[1].split(";")[0], text.split("at −20% ")[1]
    assert "it wins: its interval lies below the other's" in at10
    # overlapping intervals: no win, though every window is lower by the same 0.02 nats
    assert "the intervals overlap" in at20 and "lower outside the noise" in at20
    assert "magnitude (q/k/v)" in text.split("lowest of all")[1]

    # a healed checkpoint gets its own table, with its interval and a paired comparison with the grid
    healed = row("prune-mlp+kd", 0.2, [x + 0.5 for x in base], checkpoint="runs/heal_books/x/final",
                 trained_tokens=50176)
    text = experiment_tables.leaderboard_books(rows + [healed])
    part = text.split("Healed students")[1]
    assert "trained on its tokens of books:train" in part and "runs/heal_books/" in part
    assert "| width pruning (MLP, compensated) + KD | −20% |" in part and "[" in part.split("+ KD | −20% |")[1]
    assert "lower than the grid's Basis Sharing" in part and "lower on 4 of 4" in part
    assert "prune-mlp+kd" not in text.split("Healed students")[0]  # not a grid row


def test_pruned_arms_match_the_prune_experiment_and_reach_three_percent():
    from experiments import prune
    from jaxshare.core.config import ModelConfig

    cfg = ModelConfig(family="llama", vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                      head_dim=64, d_ff=1536, max_seq_len=8192, norm_eps=1e-5)
    total = 134515008
    for budget in (0.1, 0.2):
        for arm in ("prune-mlp", "prune-mlp+kv"):
            assert lb.prune_at(cfg, total, budget, arm) == prune.arms(cfg, total, budget)[f"{arm}+comp"]
    with pytest.raises(ValueError):  # the experiment's builder stops below one KV group's share
        prune.arms(cfg, total, 0.03)
    method, opts = lb.prune_at(cfg, total, 0.03, "prune-mlp")
    assert method == "prune" and 0 < opts.mlp < 0.1 and opts.compensate
