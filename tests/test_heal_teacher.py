"""experiments.heal_teacher: its arms are the CLI commands a user runs, at heal_books' settings, and its
report pairs each arm with heal_books' rows on the same windows."""
import json

from experiments import heal, heal_teacher


def parsed_config(cmd: list[str]):
    from jaxshare.cli.heal import heal_config
    from jaxshare.cli.main import build_parser
    from jaxshare.training.config import load_config

    args = build_parser().parse_args(cmd[3:])  # [python, -m, jaxshare, ...]
    return heal_config(args) if args.command == "heal" else load_config(args.config, args.set, mode=args.mode)


def test_arms_parse_to_heal_books_settings(monkeypatch, tmp_path):
    monkeypatch.setattr(heal_teacher, "student", lambda *a: tmp_path / "prune_0.2")
    cfgs = {arm: parsed_config(heal_teacher.command(arm, 50000)[0]) for arm in heal_teacher.ARMS}
    for arm, tc in cfgs.items():
        # experiments.heal's defaults (lr 2e-4, batch 2, 512 tokens, 5 warm-up steps, 32 windows) with
        # --eval-tokens 16384, the settings heal_books' rows ran at
        assert (tc.lr, tc.batch_size, tc.seq_len, tc.warmup_steps, tc.end_lr_ratio, tc.eval_windows, tc.eval_every,
                tc.tokens, tc.seed, tc.dtype) == (2e-4, 2, 512, 5, 0.1, 32, 16, 50000, 0, "fp32"), arm
        assert (tc.data, tc.eval_data, tc.checkpoint_every) == ("books:train", "books:test", 0)
    assert cfgs["teacher"].mode == "plain" and cfgs["teacher"].model == heal.TEACHER
    corrected = str(heal_teacher.RUNS / "dense_ce_50000" / "final")
    for arm, alpha in (("kd", 0.0), ("kd+ce", 0.5)):
        tc = cfgs[arm]
        assert (tc.mode, tc.trains, tc.kd_alpha, tc.teacher, tc.model) == ("heal", "all", alpha, corrected,
                                                                           str(tmp_path / "prune_0.2"))
    assert heal_teacher.command("kd", 50000)[1] != heal_teacher.command("kd+ce", 50000)[1]


def test_report_pairs_each_arm_with_heal_books(monkeypatch, tmp_path):
    def final(nll, d=0.1):
        return {"ppl": 2.718281828 ** nll, "nll": nll, "ci95": [1.0, 2.0], "params": 100,
                "window_nll": [nll - d, nll + d]}

    stamp = {"commit": "c0ffee" * 7, "machine": "m", "command": "c"}
    books = [{"student": "dense", "budget": None, "heal": "none", "tokens": 0, "final": final(3.0)},
             {"student": "dense", "budget": None, "heal": "ce", "tokens": 50176, "final": final(2.8)},
             {"student": "prune", "budget": 0.2, "heal": "ce", "tokens": 50176, "final": final(3.4)},
             {"student": "prune", "budget": 0.2, "heal": "kd", "tokens": 50176, "final": final(3.6)}]
    rows = [{"arm": "teacher", "tokens": 50176, "final": final(2.8), "botchan": final(3.0),
             "dense_botchan": final(3.2), "wall_s": 1.0, **stamp},
            {"arm": "kd", "tokens": 50176, "final": final(3.3, 0.2), "botchan": final(3.5), "wall_s": 2.0, **stamp}]
    for path, rs in ((tmp_path / "b.jsonl", books), (tmp_path / "t.jsonl", rows)):
        path.write_text("".join(json.dumps(r) + "\n" for r in rs))
    monkeypatch.setattr(heal_teacher, "HEAL_ROWS", tmp_path / "b.jsonl")
    monkeypatch.setattr(heal_teacher, "ROWS", tmp_path / "t.jsonl")
    md = heal_teacher.report()
    assert "| dense, untrained | 20.09 | 24.53 | - | - |" in md
    assert "| prune -20% kd from it | 27.11 [1.00, 2.00] | 33.12 [1.00, 2.00] | +0.3000 [+0.3000, +0.3000]" in md
    assert "- corrected teacher - heal_books' control" in md and "+0.0000 [+0.0000, +0.0000]" in md
    # paired with ce and kd from the untrained teacher; kd+ce has no heal_books row here
    assert "- kd from the corrected teacher - ce (untrained teacher): 27.11 against 29.96, -0.1000" in md
    assert "- kd from the corrected teacher - kd (untrained teacher)" in md and "- kd+ce" not in md
