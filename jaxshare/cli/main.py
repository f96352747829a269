"""The `jaxshare` command. Each subcommand parses arguments and calls library code; results go to
stdout (one JSON object with --json), progress and messages to stderr."""
from __future__ import annotations

import _thread
import argparse
import importlib
import json
import signal
import sys
import threading

from jaxshare.cli.common import (COUNT, DATA_HELP, MODEL_HELP, SEED, SEQ_LEN, SHARD_MB, TEMPERATURE, TOP_P,
                                 PARAM_DTYPE_HELP, STORAGE_DTYPE_HELP, HelpFormatter, Parser, batch_size_arg, check_out_dir,
                                 compute_dtype_arg, emit, memory_size, nonempty, plot_dir, refuse_dtype_arg)
from jaxshare.cli import demo  # the module, not its function: tests stop `demo.run_demo` at its work
from jaxshare.cli.evalmc import register as register_mc  # `eval mc` (lm-eval, the [eval] extra)
from jaxshare.cli.xla_cache import enable_compilation_cache  # before jax: its settings, its safe file cache
from jaxshare.cli.quantize import export_gguf_cmd, gguf_export_args  # --format, --gguf-type (GGUF output)
from jaxshare.data.corpora import corpus_path, load_corpus
from jaxshare.errors import EXIT_INTERRUPTED, EXIT_USER, JaxshareError
from jaxshare.storage.atomic import describe, is_io_error

# Modules with a `register(sub, add, group)` that adds a method's subcommands (imports stay lazy).
COMMAND_MODULES: list[str] = ["jaxshare.cli.share", "jaxshare.cli.basis", "jaxshare.cli.train",
                              "jaxshare.cli.inheritune", "jaxshare.cli.compose", "jaxshare.cli.quantize",
                              "jaxshare.cli.heal", "jaxshare.cli.prune"]



def cmd_fetch(args) -> None:
    if args.what == "model":
        # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
        from jaxshare.io.load import registered_native

        path = registered_native(args.name)
    else:
        path = corpus_path(args.name)
    emit(args, {"path": str(path)}, str(path))


def cmd_convert(args) -> None:
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    from jaxshare.io.load import convert

    check_out_dir(args.out, args.overwrite, sources=(args.src,))  # before the model is loaded: a taken OUT costs nothing
    # streamed: one tensor in memory at a time (HF and GGUF sources)
    out, cfg, _ = convert(args.src, args.out, args.dtype, allow_bin=args.allow_bin, overwrite=args.overwrite)
    emit(args, {"out": str(out), "family": cfg.family}, f"wrote jaxshare checkpoint {out}")


def cmd_export(args) -> None:
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    from jaxshare.io.hf import export_hf
    from jaxshare.io.load import load_model

    if args.format == "gguf" or (args.format is None and str(args.out).endswith(".gguf")):
        return export_gguf_cmd(args)
    check_out_dir(args.out, args.overwrite, sources=(args.model,))
    m = load_model(args.model, "fp32", allow_bin=args.allow_bin)
    # export_hf writes the manifests (sharing.json, basis.json + basis.safetensors) by itself
    out = export_hf(m.params, m.cfg, args.out, m.tokenizer, dtype=args.dtype,
                    max_shard_bytes=int(args.max_shard_mb * 2**20), overwrite=args.overwrite,
                    info=m.meta.get("extra"))
    emit(args, {"out": str(out), "dtype": args.dtype}, f"wrote Hugging Face directory {out}")


def _docs(data: str):
    return load_corpus(data)


def cmd_eval_ppl(args) -> None:
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    from jaxshare.eval.perplexity import check_max_memory, check_seq_len, perplexity
    from jaxshare.io.load import load_model

    m = load_model(args.model, args.param_dtype)
    check_seq_len(m.cfg, args.seq_len)
    m.need_tokenizer("eval ppl")
    check_max_memory(m.cfg, args.seq_len, args.max_memory, args.compute_dtype)
    # the batch shrinks to fit --max-memory beside the loaded params (logits are made in vocabulary chunks)
    res = perplexity(m.params, m.cfg, m.tokenizer, _docs(args.data), args.seq_len, args.max_windows,
                     args.batch_size, args.compute_dtype, max_memory=args.max_memory)
    # "dtype" is the key older scripts read; "compute_dtype" says what it is
    res.update(model=args.model, data=args.data, dtype=args.compute_dtype, compute_dtype=args.compute_dtype,
               param_dtype=args.param_dtype)
    emit(args, res, f"ppl {res['ppl']:.4f}  (nll {res['nll']:.4f}, {res['tokens']} tokens, "
                    f"{res['windows']} windows x {res['seq_len']})")


def cmd_parity(args) -> None:
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    from jaxshare.eval.perplexity import check_seq_len
    from jaxshare.io.load import load_model
    from jaxshare.eval.parity import run_parity

    m = load_model(args.model, "fp32")
    check_seq_len(m.cfg, args.seq_len)
    res = run_parity(m, _docs(args.data), args.seq_len, args.max_windows, free_params=True)
    emit(args, res, f"max |logit diff| {res['max_abs_logit_diff']:.3g}; ppl jaxshare {res['ppl_jax']:.4f} vs "
                    f"transformers {res['ppl_reference']:.4f} ({res['tokens']} tokens)")


def cmd_generate(args) -> None:
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    from jaxshare.core.generate import generate_text
    from jaxshare.io.load import load_model

    m = load_model(args.model, args.param_dtype)
    text = generate_text(m, args.prompt, args.max_new_tokens, chat=args.chat, temperature=args.temperature,
                         top_p=args.top_p, seed=args.seed, dtype=args.compute_dtype)
    emit(args, {"prompt": args.prompt, "completion": text}, text)


def cmd_demo(args) -> None:
    res = demo.run_demo(args.model, seq_len=args.seq_len, max_windows=args.max_windows,
                   table_to=sys.stderr if args.json else sys.stdout, plot_dir=args.plot_dir)
    if args.json:
        print(json.dumps(res))


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="jaxshare", description="Compress LLMs by sharing weights (JAX).", formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, fn, help_, json_flag=True, parent=sub):
        """A subcommand whose usage errors and runtime errors both name it in full ("jaxshare eval ppl")."""
        sp = parent.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        sp.set_defaults(fn=fn, command=sp.prog.split(" ", 1)[1], _parser=sp)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        return sp

    def group(name, dest, help_):
        """A subcommand that only holds subcommands (eval, train)."""
        sp = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        sp.set_defaults(_parser=sp)
        return sp.add_subparsers(dest=dest, required=True, metavar=dest.upper())

    f = add("fetch", cmd_fetch, "download (once) a registered model or a named corpus and print its cached path")
    f.add_argument("what", choices=["model", "data"], help="a model or a corpus")
    f.add_argument("name", type=nonempty, help="registered model name (smollm2-135m) or corpus name (books)")

    c = add("convert", cmd_convert, "convert a model to a native jaxshare checkpoint")
    c.add_argument("src", help=MODEL_HELP)
    c.add_argument("out", type=nonempty, help="output jaxshare checkpoint directory")
    c.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help=STORAGE_DTYPE_HELP)
    c.add_argument("--allow-bin", action="store_true", help="read PyTorch .bin (pickle, weights_only=True)")
    c.add_argument("--overwrite", action="store_true", help="replace OUT if it holds an earlier output")

    e = add("export", cmd_export, "export a model to a Hugging Face directory (safetensors)")
    e.add_argument("model", help=MODEL_HELP)
    e.add_argument("out", type=nonempty, help="output Hugging Face directory")
    e.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help=STORAGE_DTYPE_HELP)
    e.add_argument("--max-shard-mb", type=SHARD_MB, default=2048, help="shard size above which to split (MiB)")
    e.add_argument("--allow-bin", action="store_true", help="read PyTorch .bin (pickle, weights_only=True)")
    e.add_argument("--overwrite", action="store_true", help="replace OUT if it holds an earlier output")
    gguf_export_args(e)

    ev_sub = group("eval", "metric", "evaluate a model")
    pp = add("ppl", cmd_eval_ppl, "perplexity on a corpus (protocol in the JSON)", parent=ev_sub)
    pp.add_argument("model", help=MODEL_HELP)
    pp.add_argument("--data", required=True, help=DATA_HELP)
    pp.add_argument("--seq-len", type=SEQ_LEN, default=512, help="tokens per window")
    pp.add_argument("--max-windows", type=COUNT, default=None,
                    help="evaluate only the first K windows (default: every window of the corpus)")
    batch_size_arg(pp, 8, "windows per forward pass (at most; speed and memory only)")
    pp.add_argument("--max-memory", type=memory_size, default=None,
                    help="peak memory to stay under (e.g. 12G): the batch shrinks to fit beside the model "
                         "(default: no limit beyond --batch-size)")
    pp.add_argument("--param-dtype", choices=["fp32", "bf16"], default="fp32", help=PARAM_DTYPE_HELP)
    compute_dtype_arg(pp)
    refuse_dtype_arg(pp)

    register_mc(ev_sub, add)

    pa = add("parity", cmd_parity, "compare logits and PPL with transformers (torch fp32) on the same tokens")
    pa.add_argument("model", help=MODEL_HELP)
    pa.add_argument("--data", default="canterbury", help=DATA_HELP)
    pa.add_argument("--seq-len", type=SEQ_LEN, default=512, help="tokens per window")
    pa.add_argument("--max-windows", type=COUNT, default=2, help="windows compared")
    refuse_dtype_arg(pa)

    g = add("generate", cmd_generate, "generate text with a KV cache")
    g.add_argument("model", help=MODEL_HELP)
    g.add_argument("--prompt", required=True, type=nonempty, help="text to continue (not empty)")
    g.add_argument("--max-new-tokens", type=COUNT, default=64,
                   help="tokens to generate at most (prompt + new tokens must fit the model's positions)")
    g.add_argument("--temperature", type=TEMPERATURE, default=0.0, help="sampling temperature >= 0; 0 = greedy")
    g.add_argument("--top-p", type=TOP_P, default=1.0, help="nucleus mass in (0, 1]; 1 = no cut")
    g.add_argument("--seed", type=SEED, default=0, help="sampling seed")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    g.add_argument("--param-dtype", choices=["fp32", "bf16"], default="fp32", help=PARAM_DTYPE_HELP)
    compute_dtype_arg(g)
    refuse_dtype_arg(g)

    d = add("demo", cmd_demo, "the main workflow on the embedded SmolLM2-135M (or --model gemma3-270m), end to end")
    d.add_argument("--model", default="smollm2-135m", help=MODEL_HELP)
    d.add_argument("--seq-len", type=SEQ_LEN, default=512, help="tokens per evaluation window")
    d.add_argument("--max-windows", type=COUNT, default=16, help="evaluation windows per perplexity")
    d.add_argument("--plot-dir", metavar="DIR", type=plot_dir, default="jaxshare_demo",
                   help="where the demo writes its PNG plots")
    refuse_dtype_arg(d)

    for module in COMMAND_MODULES:  # each method's subcommands live beside its code
        importlib.import_module(module).register(sub, add, group)
    return p


def _is_user_error(e: BaseException) -> bool:
    """An error the user can fix: ours (JaxshareError), or an OS / library I/O error (a file that
    cannot be read or written: permission, no space, not a directory). Anything else is a bug in
    jaxshare and keeps its traceback."""
    return isinstance(e, JaxshareError) or is_io_error(e)


def _message(e: BaseException) -> str:
    if isinstance(e, JaxshareError):
        return str(e)
    return describe(e)  # "No space left on device (path)": the cause first, one line


def main(argv=None) -> int:
    """Exit codes (README, Safety): 0 done; 2 an error the user can fix, one line on stderr;
    3 a training run preempted after saving a checkpoint; 130 interrupted (Ctrl-C)."""
    try:  # parsing imports modules (and may take a moment): a Ctrl-C there is no traceback either
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("jaxshare: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    enable_compilation_cache()
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _interrupt_hook(previous_hook)
    try:
        rc = args.fn(args)
    except KeyboardInterrupt:
        print(f"jaxshare {args.command}: interrupted; nothing half-written was kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 (filtered just below: bugs are re-raised)
        if not _is_user_error(e):
            raise
        print(f"jaxshare {args.command}: error: {_message(e)}", file=sys.stderr)
        return EXIT_USER
    finally:
        sys.unraisablehook = previous_hook
    return rc if isinstance(rc, int) else 0


def _interrupt_hook(previous):
    """A Ctrl-C that lands in a callback Python cannot raise from (jax's GC callback) would be
    printed as "Exception ignored" and the command would go on: raise it again in the main thread."""
    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            # from another thread, a moment later: raised here, inside the hook, it would be
            # "ignored" once more
            threading.Timer(0.01, _thread.interrupt_main).start()
            return
        previous(unraisable)

    return hook


def run() -> None:
    """The console entry: once the command has returned, a late Ctrl-C must not turn its exit
    code into a KeyboardInterrupt traceback while Python shuts down."""
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if code == EXIT_USER:
        # The error is said in one line. What the failed work left pending (an orbax read of a
        # checkpoint that does not match, still queued in its event loop) is collected as Python
        # exits, and each would print a traceback as "Exception ignored".
        sys.unraisablehook = lambda unraisable: None
    sys.exit(code)


if __name__ == "__main__":
    run()
