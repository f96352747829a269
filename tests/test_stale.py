"""benchmarks.stale: which committed results the code has moved past."""
import json
import subprocess

from benchmarks import stale


def _git(root, *args):
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=root, check=True,
                   capture_output=True)


def _head(root):
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()


def _repo(root):
    """A repository whose one commit holds code a study measures (jaxshare/core) and a README."""
    (root / "jaxshare/core").mkdir(parents=True)
    (root / "jaxshare/core/model.py").write_text("x = 1\n")
    (root / "README.md").write_text("hi\n")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "code")
    return root


def test_every_committed_result_belongs_to_a_study():
    rows = stale.check()
    assert rows and all(stale.study_of(r.file) is not None for r in rows), \
        [r.file for r in rows if stale.study_of(r.file) is None]
    assert {r.status for r in rows} <= {"current", "stale", "unknown", "historical"}


def test_a_result_goes_stale_when_its_measured_code_changes(tmp_path):
    root = _repo(tmp_path)
    (root / "benchmarks/results").mkdir(parents=True)
    stamped = root / "benchmarks/results/forward.json"
    stamped.write_text(json.dumps({"commit": _head(root), "tok_s": 1.0}))
    rows = root / "benchmarks/results/directshare_sweep_books.jsonl"  # rows without a commit: the file's own commit
    rows.write_text(json.dumps({"ppl": 3.0}) + "\n" + json.dumps({"ppl": 4.0}) + "\n")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "results")
    by = {r.file: r for r in stale.check(root)}
    assert by["benchmarks/results/forward.json"].status == "current" and by["benchmarks/results/forward.json"].stamped
    assert by["benchmarks/results/directshare_sweep_books.jsonl"].rows == 2
    assert by["benchmarks/results/directshare_sweep_books.jsonl"].status == "current"
    assert not by["benchmarks/results/directshare_sweep_books.jsonl"].stamped

    (root / "README.md").write_text("not measured code\n")
    _git(root, "commit", "-qam", "docs")
    assert {r.status for r in stale.check(root)} == {"current"}

    (root / "jaxshare/core/model.py").write_text("# why x is one\nx = 1  # a comment changes no number\n")
    _git(root, "commit", "-qam", "comments only")
    assert {r.status for r in stale.check(root)} == {"current"}

    (root / "jaxshare/core/model.py").write_text("x = 2\n")
    _git(root, "commit", "-qam", "the model changes")
    by = {r.file: r for r in stale.check(root)}
    assert by["benchmarks/results/forward.json"].status == "stale"
    assert by["benchmarks/results/forward.json"].changed == ["jaxshare/core/model.py"]
    assert "**stale**" in stale.markdown(list(by.values()))

    stamped.write_text(json.dumps({"commit": "0" * 40}))  # a commit this history does not hold
    assert {r.file: r for r in stale.check(root)}["benchmarks/results/forward.json"].status == "unknown"


def test_a_result_run_is_clean_when_only_result_files_changed(monkeypatch):
    """git's porcelain line for a file changed in the work tree starts with a space; the stripped
    output used to lose it on the first line, read "xperiments/results/..." and call the run dirty."""
    from benchmarks import common

    status = {"status": " M experiments/results/a.json\n M benchmarks/results/b.json", "rev-parse": "c0ffee"}
    monkeypatch.setattr(common, "_git", lambda *args: status[args[0]].strip())
    assert common._checkout() == {"commit": "c0ffee", "dirty": False}
    status["status"] = " M experiments/results/a.json\n M jaxshare/core/model.py"
    assert common._checkout()["dirty"] is True


def test_each_stamped_part_of_a_result_counts_and_a_log_counts_its_newest_row(tmp_path):
    root = tmp_path
    (root / "jaxshare/core").mkdir(parents=True)
    (root / "benchmarks/results").mkdir(parents=True)
    (root / "jaxshare/core/model.py").write_text("x = 1\n")
    (root / "tests").mkdir()
    (root / "tests/conftest.py").write_text("y = 1\n")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "code")
    old = _head(root)
    (root / "jaxshare/core/model.py").write_text("x = 2\n")
    (root / "tests/conftest.py").write_text("y = 2\n")
    _git(root, "commit", "-qam", "the model and the suite change")
    new = _head(root)
    memory = root / "benchmarks/results/memory.json"  # one case rerun since, one not
    memory.write_text(json.dumps({"commit": new, "models": {"m": {"cases": {"a": {"commit": new},
                                                                             "b": {"commit": old}}}}}))
    log = root / "benchmarks/results/suite.jsonl"  # an old run, then one at the current code
    log.write_text(json.dumps({"commit": old}) + "\n" + json.dumps({"commit": new}) + "\n")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "results")
    by = {r.file: r for r in stale.check(root)}
    assert by["benchmarks/results/memory.json"].status == "stale"
    assert by["benchmarks/results/memory.json"].changed == ["jaxshare/core/model.py"]
    assert by["benchmarks/results/suite.jsonl"].status == "current" and by["benchmarks/results/suite.jsonl"].rows == 2
    memory.write_text(json.dumps({"commit": new, "models": {"m": {"cases": {"a": {"commit": new}}}}}))
    assert {r.file: r for r in stale.check(root)}["benchmarks/results/memory.json"].status == "current"


def test_a_historical_result_is_never_stale():
    by = {r.file: r for r in stale.check()}
    for rel in stale.HISTORICAL:
        assert by[rel].status == "historical"


def test_a_rerun_reuses_earlier_work_only_while_its_measured_code_is_unchanged(tmp_path):
    from benchmarks import common

    root = _repo(tmp_path / "repo")
    made = _head(root)
    result = "benchmarks/results/forward.json"  # a study measuring jaxshare/core
    run = root / "runs/arm"
    (run / "run/final").mkdir(parents=True)

    def refused(path):
        try:
            common.check_reuse(path, result, root)
        except SystemExit as e:
            return str(e)
        return None

    assert "records no commit" in refused(run)  # made before marks existed: nothing says by what code
    common.made_at(run).write_text(json.dumps({"commit": made, "dirty": False}))
    assert refused(run) is None and refused(run / "run/final") is None  # a checkpoint inside: the run's mark
    (root / "README.md").write_text("hello\n")  # not code the study measures
    (root / "jaxshare/core/model.py").write_text("x = 1  # why\n")  # a comment only
    _git(root, "commit", "-qam", "docs")
    assert refused(run / "run/final") is None
    (root / "jaxshare/core/model.py").write_text("x = 2\n")
    _git(root, "commit", "-qam", "code changes")
    msg = refused(run / "run/final")
    assert msg and made[:10] in msg and "jaxshare/core/model.py" in msg and "move" in msg and str(run) in msg
    common.made_at(run).write_text(json.dumps({"commit": _head(root), "dirty": True}))
    assert "dirty checkout" in refused(run)
    common.made_at(run).write_text(json.dumps({"commit": "0" * 40, "dirty": False}))
    assert "unknown commit" in refused(run)
    fresh = root / "runs/new"
    common.claim(fresh, result)  # absent: marked with this checkout, not checked
    assert json.loads(common.made_at(fresh).read_text())["commit"] == common.START["commit"]
