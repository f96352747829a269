"""The `jaxshare` command. Each subcommand parses arguments and calls library code; results go to
stdout (one JSON object with --json), progress and messages to stderr."""
from __future__ import annotations

import argparse
import json
import sys

MODEL_HELP = "a registered name (smollm2-135m), an HF directory, a .gguf file, or a jaxshare checkpoint"
DATA_HELP = "a named corpus (canterbury, botchan, wiki[:split], xsum[:split]) or a .txt/.jsonl file"


# Modules with a `register(sub, add)` that adds a method's subcommands (imports stay lazy).
COMMAND_MODULES: list[str] = ["jaxshare.cli.share", "jaxshare.cli.basis", "jaxshare.cli.train"]


def _emit(args, obj: dict, text: str) -> None:
    print(json.dumps(obj) if getattr(args, "json", False) else text)


def cmd_fetch(args) -> None:
    if args.what == "model":
        from jaxshare.io.load import registered_native

        path = registered_native(args.name)
    else:
        from jaxshare.data.corpora import corpus_path

        path = corpus_path(args.name)
    _emit(args, {"path": str(path)}, str(path))


def cmd_convert(args) -> None:
    from jaxshare.io.atomic import check_destination
    from jaxshare.io.native import save_native
    from jaxshare.io.load import load_model

    check_destination(args.out, args.overwrite)  # before the (slow) load
    m = load_model(args.src, args.dtype, allow_bin=args.allow_bin)
    out = save_native(args.out, m.cfg, m.params, m.tokenizer, extra={"converted_from": str(m.source)},
                      overwrite=args.overwrite)
    _emit(args, {"out": str(out), "family": m.cfg.family}, f"wrote jaxshare checkpoint {out}")


def cmd_export(args) -> None:
    from jaxshare.io.hf import export_hf
    from jaxshare.io.load import load_model

    import importlib

    from jaxshare.io.atomic import check_destination
    from jaxshare.io.native import EXPORT_FILES, MANIFEST_KEYS

    check_destination(args.out, args.overwrite)  # before the (slow) load
    m = load_model(args.model, "fp32", allow_bin=args.allow_bin)
    extra = m.meta.get("extra", {})
    manifests = {f"{k}.json": extra[k] for k in MANIFEST_KEYS if k in extra}  # e.g. sharing.json
    files = {}
    for k, ref in EXPORT_FILES.items():  # e.g. basis.safetensors: the factors themselves
        if k in extra:
            module, fn = ref.split(":")
            files.update(getattr(importlib.import_module(module), fn)(m.params, extra[k]))
    out = export_hf(m.params, m.cfg, args.out, m.tokenizer, dtype=args.dtype,
                    max_shard_bytes=int(args.max_shard_mb * 2**20), extra_json=manifests, overwrite=args.overwrite,
                    extra_files=files)
    _emit(args, {"out": str(out), "dtype": args.dtype}, f"wrote Hugging Face directory {out}")


def _docs(data: str):
    from jaxshare.data.corpora import load_corpus

    return load_corpus(data)


def cmd_eval_ppl(args) -> None:
    from jaxshare.eval.perplexity import check_seq_len, perplexity
    from jaxshare.io.load import _jnp_dtype, load_model

    m = load_model(args.model, "fp32")
    check_seq_len(m.cfg, args.seq_len)
    res = perplexity(m.params, m.cfg, m.tokenizer, _docs(args.data), args.seq_len, args.max_windows,
                     args.batch_size, _jnp_dtype(args.dtype))
    res.update(model=args.model, data=args.data, dtype=args.dtype)
    _emit(args, res, f"ppl {res['ppl']:.4f}  (nll {res['nll']:.4f}, {res['tokens']} tokens, "
                     f"{res['windows']} windows x {res['seq_len']})")


def cmd_parity(args) -> None:
    from jaxshare.eval.perplexity import check_seq_len
    from jaxshare.io.load import load_model
    from jaxshare.eval.parity import run_parity

    m = load_model(args.model, "fp32")
    check_seq_len(m.cfg, args.seq_len)
    res = run_parity(m, _docs(args.data), args.seq_len, args.max_windows)
    _emit(args, res, f"max |logit diff| {res['max_abs_logit_diff']:.3g}; ppl jaxshare {res['ppl_jax']:.4f} vs "
                     f"transformers {res['ppl_reference']:.4f} ({res['tokens']} tokens)")


def cmd_generate(args) -> None:
    from jaxshare.core.generate import generate_text
    from jaxshare.io.load import _jnp_dtype, load_model

    m = load_model(args.model, "fp32")
    text = generate_text(m, args.prompt, args.max_new_tokens, chat=args.chat, temperature=args.temperature,
                         top_p=args.top_p, seed=args.seed, dtype=_jnp_dtype(args.dtype))
    _emit(args, {"prompt": args.prompt, "completion": text}, text)


def cmd_demo(args) -> None:
    from jaxshare.cli.demo import run_demo

    res = run_demo(args.model, seq_len=args.seq_len, max_windows=args.max_windows,
                   table_to=sys.stderr if args.json else sys.stdout, plot_dir=args.plot_dir)
    if args.json:
        print(json.dumps(res))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxshare", description="Compress LLMs by sharing weights (JAX).")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, fn, help_, json_flag=True, parent=sub):
        sp = parent.add_parser(name, help=help_, description=help_)
        sp.set_defaults(fn=fn)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        return sp

    f = add("fetch", cmd_fetch, "download (once) a registered model or a named corpus and print its cached path")
    f.add_argument("what", choices=["model", "data"])
    f.add_argument("name")

    c = add("convert", cmd_convert, "convert a model to a native jaxshare checkpoint")
    c.add_argument("src", help=MODEL_HELP)
    c.add_argument("out")
    c.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    c.add_argument("--allow-bin", action="store_true", help="read PyTorch .bin (pickle, weights_only=True)")
    c.add_argument("--overwrite", action="store_true")

    e = add("export", cmd_export, "export a model to a Hugging Face directory (safetensors)")
    e.add_argument("model", help=MODEL_HELP)
    e.add_argument("out")
    e.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    e.add_argument("--max-shard-mb", type=float, default=2048, help="shard size above which to split (MiB)")
    e.add_argument("--allow-bin", action="store_true")
    e.add_argument("--overwrite", action="store_true")

    ev = sub.add_parser("eval", help="evaluate a model", description="evaluate a model")
    ev_sub = ev.add_subparsers(dest="metric", required=True)
    pp = add("ppl", cmd_eval_ppl, "perplexity on a corpus (protocol in the JSON)", parent=ev_sub)
    pp.add_argument("model", help=MODEL_HELP)
    pp.add_argument("--data", required=True, help=DATA_HELP)
    pp.add_argument("--seq-len", type=int, default=512)
    pp.add_argument("--max-windows", type=int, default=None, help="evaluate only the first K windows")
    pp.add_argument("--batch-size", type=int, default=8)
    pp.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="compute dtype")

    from jaxshare.cli.evalmc import register as register_mc  # `eval mc` (lm-eval, the [eval] extra)
    register_mc(ev_sub, add)

    pa = add("parity", cmd_parity, "compare logits and PPL with transformers (torch fp32) on the same tokens")
    pa.add_argument("model", help=MODEL_HELP)
    pa.add_argument("--data", default="canterbury", help=DATA_HELP)
    pa.add_argument("--seq-len", type=int, default=512)
    pa.add_argument("--max-windows", type=int, default=2)

    g = add("generate", cmd_generate, "generate text with a KV cache")
    g.add_argument("model", help=MODEL_HELP)
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    g.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")

    d = add("demo", cmd_demo, "the main workflow on the embedded SmolLM2-135M, end to end")
    d.add_argument("--model", default="smollm2-135m", help=MODEL_HELP)
    d.add_argument("--seq-len", type=int, default=512)
    d.add_argument("--max-windows", type=int, default=16)
    d.add_argument("--plot-dir", default="jaxshare_demo", help="where the demo writes its PNG plots")

    import importlib

    for module in COMMAND_MODULES:  # each method's subcommands live beside its code
        importlib.import_module(module).register(sub, add)
    return p


def _user_errors():
    from jaxshare.core.config import ConfigError
    from jaxshare.io.atomic import OutputError
    from jaxshare.io.fetch import FetchError
    from jaxshare.io.hf import CheckpointError

    # OSError: a file that cannot be read or written (permission, no space, not a directory) is the
    # user's to fix, never a bug to show a traceback for.
    errors = [ConfigError, CheckpointError, FetchError, OutputError, OSError, ValueError, KeyError]
    return tuple(errors)


def _prog(parser: argparse.ArgumentParser, args) -> str:
    """The chosen subcommand's full name (`jaxshare eval ppl`), found by the function it runs."""
    found = []

    def walk(p):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sp in action.choices.values():
                    walk(sp)
        if p._defaults.get("fn") is getattr(args, "fn", None):
            found.append(p.prog)

    walk(parser)
    chosen = {v for v in vars(args).values() if isinstance(v, str)}  # e.g. train's mode
    return next((p for p in found if p.split()[-1] in chosen), found[0] if found else parser.prog)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.fn(args)
    except _user_errors() as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"{_prog(parser, args)}: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
