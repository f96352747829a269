"""Healing by distillation (recipe `heal`, `jaxshare heal`): the KD loss is exact and chunk-free,
every kind heals, frozen leaves never move, resume is bit-identical, bad requests fail in one line."""
import dataclasses
import json
import os
import signal
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxshare.basis.calibrate import collect_grams
from jaxshare.basis.compress import compress
from jaxshare.cli.main import main as cli_main
from jaxshare.core.bank import trainable_mask
from jaxshare.core.model import forward
from jaxshare.core.params import count_params, init_params
from jaxshare.headshare.directshare import direct_share
from jaxshare.io.load import load_model
from jaxshare.io.native import save_native
from jaxshare.lora.leaf import lora_paths
from jaxshare.quant.model import QuantSpec, quantize_params
from jaxshare.storage.markers import foreign_run_entries
from jaxshare.training.config import TrainConfigError, build_config
from jaxshare.training.distill import KDLoss, kd_terms
from jaxshare.training.program import check_same_tokens
from jaxshare.training.recipes import RECIPES
from jaxshare.training.trainer import Trainer
from tests.tiny_model import TRAIN_CFG, save_run_files

CFG = TRAIN_CFG
TEACHER = init_params(CFG, jax.random.key(0))
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 17)), jnp.int32)


def _students():
    calib = np.random.default_rng(1).integers(0, 256, (4, 32)).astype(np.int32)
    basis = compress(TEACHER, CFG, collect_grams(TEACHER, CFG, calib), 0.4, 2, progress=False)[0]
    shared = direct_share(TEACHER, CFG, 0.5)[0]
    quant = quantize_params(TEACHER, CFG, QuantSpec(bits=4, group=None, sym=False, method="rtn"), progress=False)[0]
    return {"dense": TEACHER, "basis": basis, "shared": shared, "quant": quant}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("heal")
    for name, p in _students().items():
        save_native(d / name, CFG, p, None)
    return save_run_files(d, model="teacher")  # TEACHER: the same weights


def config(files, student, run_dir, **kw):
    base = dict(mode="heal", model=str(files / student), teacher=str(files / "teacher"), data=str(files / "train.npy"),
                eval_data=str(files / "eval.npy"), run_dir=str(run_dir), steps=4, seq_len=32, batch_size=4, lr=1e-3,
                warmup_steps=1, eval_every=2, eval_windows=4, checkpoint_every=0, mesh="data=1,fsdp=1",
                progress=False, tensorboard=False, export_hf=False)
    base.update(kw)
    return build_config(base)


def test_kd_of_a_model_against_itself_is_zero_with_zero_gradient():
    spec = KDLoss(temperature=2.0, chunk=5)
    (loss, mets), g = jax.value_and_grad(lambda p: kd_terms(p, CFG, TEACHER, CFG, TOKENS, spec), has_aux=True)(TEACHER)
    assert abs(float(loss)) < 1e-6 and abs(float(mets["kd"])) < 1e-6
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(g)) < 1e-6


def test_kd_is_the_unchunked_kl_and_its_gradient_matches_finite_differences():
    student = jax.tree_util.tree_map(lambda x: x * 3.0, TEACHER)  # KL well above fp32 rounding
    spec = KDLoss(temperature=1.5, alpha=0.25, chunk=4)  # 16 positions in 4 chunks; also 5 (a padded last chunk)
    loss, mets = kd_terms(student, CFG, TEACHER, CFG, TOKENS, spec)
    ls, lt = forward(student, CFG, TOKENS)[:, :-1] / 1.5, forward(TEACHER, CFG, TOKENS)[:, :-1] / 1.5
    pt = jax.nn.softmax(lt, -1)
    kl = jnp.mean(jnp.sum(pt * (jax.nn.log_softmax(lt, -1) - jax.nn.log_softmax(ls, -1)), -1)) * 1.5 ** 2
    assert float(mets["kd"]) == pytest.approx(float(kl), rel=1e-5)
    assert float(kd_terms(student, CFG, TEACHER, CFG, TOKENS, dataclasses.replace(spec, chunk=5))[0]) == \
        pytest.approx(float(loss), rel=1e-6)
    assert float(loss) == pytest.approx(0.75 * float(kl) + 0.25 * float(mets["ce"]), rel=1e-6)
    grad = jax.grad(lambda p: kd_terms(p, CFG, TEACHER, CFG, TOKENS, spec)[0])(student)
    wq = student.layers.attn.wq
    v = jax.random.normal(jax.random.key(2), wq.shape)
    v = v / jnp.linalg.norm(v)
    h = 1e-2

    def f(t):
        p = dataclasses.replace(student, layers=dataclasses.replace(
            student.layers, attn=dataclasses.replace(student.layers.attn, wq=wq + t * v)))
        return float(kd_terms(p, CFG, TEACHER, CFG, TOKENS, spec)[0])

    fd = (f(h) - f(-h)) / (2 * h)
    assert fd == pytest.approx(float(jnp.vdot(grad.layers.attn.wq, v)), rel=2e-2)


def test_hidden_state_term_is_zero_against_itself_and_positive_otherwise():
    spec = KDLoss(beta=1.0, layers=(1, 3))
    assert float(kd_terms(TEACHER, CFG, TEACHER, CFG, TOKENS, spec)[1]["hid"]) < 1e-9
    other = jax.tree_util.tree_map(lambda x: x * 1.1, TEACHER)
    assert float(kd_terms(other, CFG, TEACHER, CFG, TOKENS, spec)[1]["hid"]) > 1e-4


def _leaf_items(params):
    return jax.tree_util.tree_flatten_with_path(params)[0]


# dense: test_kd_of_a_model_against_itself...; quant + lora: test_jaxshare_heal_writes_the_healed_model
@pytest.mark.parametrize("kind,trains", [("basis", "all"), ("shared", "all"), ("quant", "all"),
                                         ("basis", "compressed"), ("shared", "lora")])
def test_every_kind_heals_and_frozen_leaves_never_move(files, tmp_path, kind, trains):
    tc = config(files, kind, tmp_path / "run", trains=trains, lora_rank=2)
    res = Trainer(tc).run()
    assert res["status"] == "completed"
    if kind == "dense":  # the teacher itself: no gap to recover, and KD's gradient is zero
        assert res["start_ppl"] == pytest.approx(res["teacher_ppl"], rel=1e-6) and res["recovered"] == 0
    else:
        assert res["eval_ppl"] < res["start_ppl"] and 0 < res["recovered"]
    before, after = load_model(str(files / kind)).params, load_model(res["final"]).params
    if trains == "lora":
        assert res["adapter_params"] == count_params(after) - count_params(before) > 0
        base = jax.tree_util.tree_map(lambda x: x, after)
        from jaxshare.lora.leaf import strip

        for (p, x), (_, y) in zip(_leaf_items(before), _leaf_items(strip(base))):
            assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(p)
        return
    mask = trainable_mask(before)
    moved = []
    for (p, x), (_, y), m in zip(_leaf_items(before), _leaf_items(after), jax.tree_util.tree_leaves(mask)):
        same = np.array_equal(np.asarray(x), np.asarray(y))
        if not m:
            assert same, jax.tree_util.keystr(p)  # indices, codes, zero points
        elif trains == "compressed" and "norm" not in jax.tree_util.keystr(p) and "basis" not in \
                jax.tree_util.keystr(p) and "coef" not in jax.tree_util.keystr(p):
            assert same, jax.tree_util.keystr(p)  # dense weights stay under trains=compressed
        moved.append(not same)
    assert any(moved) or kind == "dense"


def test_lora_heal_merges_dense_adapters_at_the_end(files, tmp_path):
    tr = Trainer(config(files, "dense", tmp_path / "run", trains="lora", merge=True))
    res = tr.run()
    assert res["merge"]["merged"] and not res["merge"]["kept"]
    assert tr.teacher.params is None  # released before the end of the run (a whole model at 1.5B)
    final = load_model(res["final"]).params
    assert not lora_paths(final) and count_params(final) == count_params(TEACHER)


class Rows:
    """A metric writer that keeps the rows, and preempts the run (SIGTERM) at one step."""

    def __init__(self, stop_at=None):
        self.rows, self.stop_at = [], stop_at

    def write(self, step, scalars):
        self.rows.append({"step": step, **scalars})
        if step == self.stop_at and "loss" in scalars:
            os.kill(os.getpid(), signal.SIGTERM)

    def close(self):
        pass


def test_preempted_heal_resumes_bit_identically(files, tmp_path):
    kw = dict(trains="lora", steps=6, eval_every=0)
    ref = Rows()
    Trainer(config(files, "basis", tmp_path / "ref", **kw), writer=ref).run()
    cut = Rows(stop_at=3)
    assert Trainer(config(files, "basis", tmp_path / "cut", **kw), writer=cut).run()["status"] == "preempted"
    rest = Rows()
    res = Trainer.resume(str(tmp_path / "cut"), writer=rest).run()
    assert res["status"] == "completed"
    steps = [r for r in ref.rows if "loss" in r]
    got = [r for r in cut.rows + rest.rows if "loss" in r]
    assert [r["step"] for r in got] == list(range(1, 7))
    for a, b in zip(steps, got):
        assert (a["loss"], a["kd"], a["grad_norm"]) == (b["loss"], b["kd"], b["grad_norm"])
    assert json.loads((tmp_path / "cut" / "result.json").read_text())["eval_ppl"] == \
        json.loads((tmp_path / "ref" / "result.json").read_text())["eval_ppl"]


def test_jaxshare_heal_writes_the_healed_model(files, tmp_path, capsys):
    out = tmp_path / "healed"
    argv = ["heal", str(files / "quant"), str(out), "--teacher", str(files / "teacher"), "--data",
            str(files / "train.npy"), "--eval-data", str(files / "eval.npy"), "--steps", "3", "--seq-len", "32", "--set", "batch_size=4",
            "--trains", "lora", "--rank", "2", "--run-dir", str(tmp_path / "run"), "--set", "mesh=data=1,fsdp=1",
            "--set", "progress=false", "--set", "tensorboard=false", "--set", "eval_windows=4", "--json"]
    assert cli_main(argv) == 0
    # everything the heal left in its run dir is jaxshare's (heal_baseline.json once was not, and
    # the same heal again with --overwrite was refused)
    assert foreign_run_entries(tmp_path / "run") == [] and (tmp_path / "run" / "heal_baseline.json").is_file()
    capsys.readouterr()
    assert cli_main([*argv, "--overwrite"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    m = load_model(str(out))
    assert lora_paths(m.params) and m.meta["extra"]["heal"]["teacher"] == str(files / "teacher")
    assert res["params"] == count_params(m.params) and res["adapter_params"] > 0


@pytest.mark.parametrize("sets,msg", [
    (["teacher="], "needs a teacher"),
    (["trains=some"], "trains must be one of"),
    (["merge=true"], "merge folds LoRA adapters"),
    (["kd_beta=1"], "needs kd_layers"),
    (["ratio=0.3"], "heal trains the model as it is"),
])
def test_bad_heal_configs_fail_before_compute(files, tmp_path, sets, msg):
    base = dict(mode="heal", model=str(files / "dense"), teacher=str(files / "teacher"), run_dir=str(tmp_path))
    with pytest.raises(TrainConfigError, match=msg):
        build_config(base, sets)


def test_teacher_with_another_tokenizer_is_refused():
    s = SimpleNamespace(cfg=CFG, tokenizer=None)
    t = SimpleNamespace(cfg=dataclasses.replace(CFG, vocab_size=300), tokenizer=None)
    with pytest.raises(TrainConfigError, match="same tokenizer"):
        check_same_tokens(s, t, "s", "t")
    vocab = SimpleNamespace(get_vocab=lambda: {"a": 0})
    other = SimpleNamespace(get_vocab=lambda: {"b": 0})
    with pytest.raises(TrainConfigError, match="different tokenizers"):
        check_same_tokens(SimpleNamespace(cfg=CFG, tokenizer=vocab), SimpleNamespace(cfg=CFG, tokenizer=other), "s", "t")


def test_aot_compiles_the_heal_step_with_its_teacher():
    """The AOT dry-run compiles each recipe's own step: a heal step takes the teacher's params
    as an argument, and LoRA's optimizer state covers only the adapters."""
    from jaxshare.training.aot import compile_step

    base = dict(model="x", steps=2, seq_len=32, batch_size=2, mesh="data=1,fsdp=1")
    plain = compile_step(build_config(dict(base, mode="plain")), CFG)
    full = compile_step(build_config(dict(base, mode="heal", teacher="x")), CFG)
    lora = compile_step(build_config(dict(base, mode="heal", teacher="x", trains="lora", lora_rank=4)), CFG)
    n = count_params(TEACHER)
    assert (plain["recipe"], full["recipe"]) == ("plain", "heal")
    assert full["argument_size"] - plain["argument_size"] == 4 * n  # + the fp32 teacher
    adapters = lora["n_params"] - n
    assert adapters == CFG.n_layers * 4 * sum(a + b for a, b in
                                              [(48, 48), (48, 24), (48, 24), (48, 48), (48, 64), (48, 64), (64, 48)])
    # student fp32 + adapters' AdamW m and v + the fp32 teacher (+ the batch, step and RNG)
    assert 0 <= lora["argument_size"] - (4 * (lora["n_params"] + 2 * adapters) + 4 * n) < 2 ** 12


def test_every_recipe_says_what_trains_and_what_is_frozen():
    tc = build_config(dict(mode="heal", teacher="x", trains="lora"))
    for name, r in RECIPES.items():
        d = r.describe(tc if name == "heal" else build_config(dict(mode=name)))
        assert {"recipe", "trains", "frozen", "loss"} <= set(d)


def test_js_heal_and_a_plan_ending_with_heal(files):
    import jaxshare as js
    from jaxshare.compose.plan import PlanError, parse_plan

    teacher = js.load(str(files / "teacher"))
    opts = dict(tokens=256, data=str(files / "train.npy"), eval_data=str(files / "eval.npy"), seq_len=32,
                eval_windows=4)
    student, _ = js.direct_share(teacher, 0.5)
    healed, rep = js.heal(student, teacher, trains="lora", lora_rank=2, **opts)
    assert rep["eval_ppl"] < rep["start_ppl"] and rep["adapter_params"] > 0 and lora_paths(healed.params)
    assert healed.extra["heal"]["trains"] == "lora"
    np.testing.assert_allclose(forward(student.params, CFG, TOKENS), forward(student.params, CFG, TOKENS))  # intact
    plan = {"steps": [{"share": {"ratio": 0.5}}, {"quantize": {"bits": 8, "method": "rtn"}}, {"heal": opts}]}
    m, rep = js.apply_plan(teacher, plan)
    assert rep["steps"][-1]["method"] == "heal" and 0 < rep["steps"][-1]["recovered"]
    with pytest.raises(PlanError, match="must be the last step"):
        parse_plan({"steps": [{"heal": {}}, {"share": {"ratio": 0.5}}]})
    with pytest.raises(PlanError, match="only once"):
        parse_plan({"steps": [{"heal": {}}, {"heal": {}}]})
    with pytest.raises(PlanError, match="trains"):
        parse_plan({"steps": [{"heal": {"trains": "everything"}}]})


def test_config_sections_nest_and_the_reference_is_generated(tmp_path):
    from pathlib import Path

    from jaxshare.training.config import SECTIONS, TrainConfig, load_config, reference, reference_markdown

    nested = load_config("smollm2_heal")
    assert nested.mode == "heal" and nested.trains == "all" and nested.lr == 2e-4 and nested.eval_windows == 32
    flat = build_config({"mode": "heal", "teacher": "t", "optimizer": {"lr": 1e-3}, "seq_len": 64})
    assert (flat.lr, flat.seq_len) == (1e-3, 64)
    with pytest.raises(TrainConfigError, match="section optimizer has no key 'seq_len' .it belongs to section data"):
        build_config({"optimizer": {"seq_len": 64}})
    with pytest.raises(TrainConfigError, match="given twice"):
        build_config({"lr": 1e-3, "optimizer": {"lr": 1e-4}})
    assert sorted(k for keys in SECTIONS.values() for k in keys) == sorted(TrainConfig.keys())
    assert all(r["doc"] for r in reference()), [r["key"] for r in reference() if not r["doc"]]
    docs = Path(__file__).resolve().parents[2] / "docs" / "config.md"
    assert docs.read_text().strip() == reference_markdown().strip(), \
        "docs/config.md is stale: python -m jaxshare.training.config > docs/config.md"
