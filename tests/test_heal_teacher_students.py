"""experiments.heal_teacher_students: each student heals with the command heal_teacher's kd+ce arm runs,
from heal_teacher's corrected teacher, and the report pairs it with heal_books' rows for the same student."""
import json

from experiments import heal_teacher, heal_teacher_students
from tests.test_heal_teacher import parsed_config


def test_each_student_heals_like_heal_teachers_kd_ce_arm(monkeypatch, tmp_path):
    for mod in (heal_teacher, heal_teacher_students):
        monkeypatch.setattr(mod, "student", lambda name, *a: tmp_path / f"{name}_0.2")
    want = parsed_config(heal_teacher.command("kd+ce", 50000)[0])
    outs = set()
    for name in heal_teacher_students.STUDENTS:
        cmd, out = heal_teacher_students.command(name, 50000)
        got = parsed_config(cmd)
        assert got.model == str(tmp_path / f"{name}_0.2") and got.kd_alpha == 0.5 and got.trains == "all"
        # everything else as the pruned student's kd+ce arm: teacher, data, schedule, windows, seed
        assert got.teacher == want.teacher == str(heal_teacher.RUNS / "dense_ce_50000" / "final")
        fields = ("mode", "lr", "batch_size", "seq_len", "warmup_steps", "end_lr_ratio", "eval_windows", "eval_every",
                  "tokens", "seed", "dtype", "data", "eval_data", "checkpoint_every")
        assert [getattr(got, f) for f in fields] == [getattr(want, f) for f in fields]
        outs.add(out)
    assert len(outs) == len(heal_teacher_students.STUDENTS)


def test_a_missing_corrected_teacher_is_one_clear_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(heal_teacher_students, "RUNS", tmp_path)
    try:
        heal_teacher_students.main(["--students", "plan", "--tokens", "123"])
    except SystemExit as e:
        assert "no corrected teacher" in str(e) and "experiments.heal_teacher --tokens 123" in str(e)
    else:
        raise AssertionError("ran without a teacher")


def test_report_pairs_each_student_with_heal_books(monkeypatch, tmp_path):
    def final(nll, d=0.1):
        return {"ppl": 2.718281828 ** nll, "nll": nll, "ci95": [1.0, 2.0], "params": 100,
                "window_nll": [nll - d, nll + d]}

    stamp = {"commit": "c0ffee" * 7, "machine": "m", "command": "c"}
    books = [{"student": "plan", "budget": 0.2, "heal": "ce", "tokens": 50176, "final": final(3.4)},
             {"student": "plan", "budget": 0.2, "heal": "kd+ce", "tokens": 50176, "final": final(3.5)},
             {"student": "basis", "budget": 0.2, "heal": "ce", "tokens": 50176, "final": final(4.0)}]
    teacher = [{"arm": "teacher", "tokens": 50176, "final": final(2.8), "botchan": final(3.0),
                "dense_botchan": final(3.2), "wall_s": 1.0, **stamp}]
    rows = [{"arm": "kd+ce", "student": "plan", "tokens": 50176, "final": final(3.3, 0.2), "botchan": final(3.5),
             "wall_s": 2.0, "peak_rss_gib": 3.25, **stamp}]
    for path, rs in ((tmp_path / "b.jsonl", books), (tmp_path / "t.jsonl", teacher), (tmp_path / "s.jsonl", rows)):
        path.write_text("".join(json.dumps(r) + "\n" for r in rs))
    monkeypatch.setattr(heal_teacher_students, "HEAL_ROWS", tmp_path / "b.jsonl")
    monkeypatch.setattr(heal_teacher_students, "TEACHER_ROWS", tmp_path / "t.jsonl")
    monkeypatch.setattr(heal_teacher_students, "ROWS", tmp_path / "s.jsonl")
    md = heal_teacher_students.report()
    assert "| budgeted plan | 50176 | 27.11 [1.00, 2.00] | 33.12 [1.00, 2.00] | +0.3000 [+0.3000, +0.3000]" in md
    assert "| 2 | 3.25 |" in md
    assert "- budgeted plan: kd+ce from the corrected teacher - ce (untrained teacher): 27.11 against 29.96, -0.1000" in md
    assert "- budgeted plan: kd+ce from the corrected teacher - kd+ce (untrained teacher): 27.11 against 33.12" in md
    assert "Basis" not in md.split("Against heal_books")[1]  # no basis row yet: nothing paired for it
    assert md.rstrip().endswith("command: `c`")
