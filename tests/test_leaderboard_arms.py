"""experiments.leaderboard: healed arms (STUDENT+HEAL) through --checkpoints, and their table."""
import json

import pytest

from benchmarks import experiment_tables
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
    how = lb.checkpoint_how("plan+ce", str(tmp_path / "final"), 30)
    assert how["trained_tokens"] == 50176 and how["heal"] == "ce" and how["student"] == "plan"
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
