"""`jaxshare eval mc --tasks PATH`: the user's own multiple-choice task files (a BIG-bench task.json
or a JSONL of rows), converted to lm-eval tasks without the bigbench sdist. Conversion and refusals
run without lm-eval; scoring through it skips without it."""
import json

import pytest

from tests.eval.conftest import assert_same_scores

from jaxshare.eval.task_files import file_task, is_task_file
from jaxshare.eval.tasks import TaskError, format_example

# The BIG-bench task.json schema (google/BIG-bench docs/doc.md): task-level prefixes, examples with
# target_scores. Two tasks in it: one with BIG-bench's defaults, one that overrides them.
QA = {"name": "capitals", "description": "capital cities", "keywords": ["multiple choice"],
      "metrics": ["multiple_choice_grade"],
      "examples": [{"input": "What is the capital of France?", "target_scores": {"Paris": 1, "Berlin": 0, "Rome": 0}},
                   {"input": "What is the capital of Japan?", "target_scores": {"Seoul": 0, "Tokyo": 1}},
                   {"input": "Which is a prime number?", "target_scores": {" 4": 0, "9 ": 0, "7": 1, "8": 0}},
                   {"input": "Which of these is a liquid at room temperature?",
                    "target_scores": {"iron": 0.0, "mercury": 0.5, "water": 0.5}}]}
CLOZE = {"name": "cloze", "task_prefix": "Complete the sentence.\n", "example_input_prefix": "",
         "example_output_prefix": " ->", "append_choices_to_input": False,
         "examples": [{"input": "The sun rises in the", "target_scores": {"east": 1, "west": 0}},
                      {"input": "Water freezes at zero degrees", "target_scores": {"Fahrenheit": 0, "Celsius": 1}},
                      {"input": "A week has seven", "target_scores": {"days": 1, "hours": 0, "years": 0}}]}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSHARE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj) if path.suffix == ".json" else "".join(json.dumps(r) + "\n" for r in obj))
    return str(path)


def test_a_bigbench_task_json_is_formatted_as_the_builtin_tasks(tmp_path, cache):
    for task in (QA, CLOZE):
        spec = _write(tmp_path / task["name"] / "task.json", task)
        name, root = file_task(spec)
        rows = [json.loads(ln) for ln in (root / f"{name}.jsonl").read_text().splitlines()]
        assert rows == [{"idx": i, **format_example(task, e)} for i, e in enumerate(task["examples"])]
        assert root.parent == cache / "lm_eval_task_files"
        yaml = (root / f"{name}.yaml").read_text()
        assert f"task: {name}\n" in yaml and json.dumps(str(root / f"{name}.jsonl")) in yaml
    first = [json.loads(ln) for ln in (file_task(_write(tmp_path / "capitals" / "task.json", QA))[1]
                                        .glob("*.jsonl").__next__().read_text().splitlines())]
    # BIG-bench's own defaults: "Q: " / "A: " prefixes and the choices listed; gold is the argmax
    # (the first on ties), choices stripped
    assert first[0]["inputs"] == "Q: What is the capital of France?\n  choice: Paris\n  choice: Berlin\n" \
                                 "  choice: Rome\nA:"
    assert first[2]["choices"] == ["4", "9", "7", "8"] and first[2]["gold"] == 2 and first[3]["gold"] == 1


def test_the_task_is_named_by_its_bytes(tmp_path, cache):
    a = file_task(_write(tmp_path / "a" / "task.json", QA))
    assert file_task(_write(tmp_path / "b" / "task.json", QA)) == a  # same bytes elsewhere: same task
    edited = {**QA, "examples": QA["examples"][:2]}
    b = file_task(_write(tmp_path / "a" / "task.json", edited))
    assert b[0] != a[0] and len((b[1] / f"{b[0]}.jsonl").read_text().splitlines()) == 2


def test_a_jsonl_of_rows_is_taken_as_it_is(tmp_path, cache):
    rows = [{"inputs": "2 + 2 =", "choices": ["3", "4"], "gold": 1},
            {"inputs": "The opposite of hot is", "choices": ["cold", "warm", "big"], "gold": 0, "extra": "kept out"}]
    name, root = file_task(_write(tmp_path / "arith.jsonl", rows))
    got = [json.loads(ln) for ln in (root / f"{name}.jsonl").read_text().splitlines()]
    assert got == [{"idx": i, "inputs": r["inputs"], "choices": r["choices"], "gold": r["gold"]}
                   for i, r in enumerate(rows)]


def test_names_and_paths_are_told_apart():
    assert not any(map(is_task_file, ["social_iqa", "bb_winowhy", "all"]))
    assert all(map(is_task_file, ["task.json", "./x", "/data/t/task.json", "rows.JSONL", "~/t.jsonl"]))


@pytest.mark.parametrize("name, content, msg", [
    ("missing.json", None, "cannot read the task file"),
    ("folder", "DIR", "is a folder; give its task.json"),
    ("bad.json", "{not json", "not JSON"),
    ("list.json", "[1, 2]", "not a BIG-bench task.json"),
    ("none.json", json.dumps({"examples": []}), "task.json has no examples"),
    ("gen.json", json.dumps({"examples": [{"input": "Say hi", "target": "hi"}]}), "example 0 needs an 'input'"),
    ("one.json", json.dumps({"examples": [{"input": "q", "target_scores": {"a": 1}}]}), "example 0 needs"),
    ("words.json", json.dumps({"examples": [{"input": "q", "target_scores": {"a": "yes", "b": "no"}}]}),
     "example 0 needs"),
    ("rows.jsonl", '{"inputs": "q", "choices": ["a", "b"], "gold": 2}\n', "line 1: 'gold' must be the index"),
    ("bool.jsonl", '{"inputs": "q", "choices": ["a", "b"], "gold": true}\n', "'gold' must be the index"),
    ("short.jsonl", '\n{"inputs": "q", "choices": ["a"], "gold": 0}\n', "line 2: 'choices' must be a list"),
    ("text.jsonl", '{"inputs": "q", "choices": ["a", "b"], "gold": 0}\nnot json\n', "line 2: not JSON"),
    ("empty.jsonl", "\n\n", "no rows"),
    ("latin1.jsonl", b'{"inputs": "caf\xe9", "choices": ["a", "b"], "gold": 0}\n', "not UTF-8"),
])
def test_a_bad_task_file_is_one_line_naming_it(tmp_path, cache, name, content, msg):
    path = tmp_path / name
    if content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(TaskError) as e:
        file_task(str(path))
    assert msg in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    assert not (cache / "lm_eval_task_files").exists() or not any((cache / "lm_eval_task_files").iterdir())


def test_eval_mc_refuses_a_bad_task_file_before_loading_the_model(tmp_path, cache, capsys):
    from jaxshare.cli.main import main

    bad = tmp_path / "t" / "task.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"examples": [{"input": "q", "target": "a"}]}))
    # the model does not exist: the task file's error comes first, before the extra and the load
    assert main(["eval", "mc", "/no/such/model", "--tasks", f"social_iqa,{bad}"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"jaxshare eval mc: error: {bad}: example 0 needs")


# ------------------------------------------------------------------ through lm-eval

def test_task_files_score_like_lm_evals_hf_backend(tiny, tmp_path, cache):
    """Our backend and lm-eval's own `hf` on our HF export, over a task.json and a JSONL: the same
    per-choice log-likelihoods (fp32, <= 1e-4 relative) and the same acc / acc_norm."""
    pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM

    from jaxshare.eval.harness import JaxshareLM
    from jaxshare.eval.mc import evaluate, parse_tasks

    rows = [{"inputs": "Question: 2 + 2 = ?\nAnswer:", "choices": ["3", "4", "22"], "gold": 1},
            {"inputs": "Question: the sky is\nAnswer:", "choices": ["blue", "green"], "gold": 0}]
    tasks = parse_tasks(f"{_write(tmp_path / 'qa' / 'task.json', QA)},{_write(tmp_path / 'rows.jsonl', rows)}")
    a = evaluate(JaxshareLM.from_loaded(tiny[0], batch_size=8), tasks, log_samples=True)
    b = evaluate(HFLM(pretrained=str(tiny[1]), dtype="float32", batch_size=8, device="cpu"), tasks, log_samples=True)
    assert [a["tasks"][t]["n"] for t in tasks] == [len(QA["examples"]), len(rows)]
    assert_same_scores(a, b, tasks)


def test_eval_mc_cli_scores_a_task_file(tiny, tmp_path, cache, capsys):
    pytest.importorskip("lm_eval")
    from jaxshare.cli.main import main

    spec = _write(tmp_path / "cloze" / "task.json", CLOZE)
    assert main(["eval", "mc", str(tiny[1]), "--tasks", spec, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    row = res["tasks"][spec]
    assert row["n"] == len(CLOZE["examples"]) and 0 <= row["acc"] <= 1 and 0 <= row["acc_norm"] <= 1
