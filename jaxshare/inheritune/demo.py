"""The demo's Inheritune step: degeneration analysis with plots, then inherit (no training)."""
from __future__ import annotations

from pathlib import Path


def demo_step(m, docs, seq_len: int, max_windows: int, plot_dir, console, batch: int = 4,
              analysis_seq_len: int = 256, ppl_batch: int = 8) -> dict:
    from jaxshare.core.params import count_params
    from jaxshare.data.corpora import load_corpus
    from jaxshare.data.tokens import token_windows, tokenize_corpus
    from jaxshare.eval.perplexity import perplexity
    from jaxshare.inheritune.degeneration import analyze, auto_k, write_plots
    from jaxshare.inheritune.inherit import inherit

    tokens = token_windows(tokenize_corpus(m.tokenizer, load_corpus("wiki:validation")),
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
