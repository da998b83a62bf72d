"""The ``promptintern`` command: parses arguments and dispatches; the work lives elsewhere."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Sequence

from .errors import UserError
from .threads import THREADS_ENV, cli_threads


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML run config (default: built-in defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.learning_rate=1e-4 (repeatable)")


def _add_run_dir_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in the same directory")
    p.add_argument("--force", action="store_true", help="wipe an existing run directory first")


THREADS_HELP = (f"CPU threads for torch, before or after the command (default: ${THREADS_ENV}, "
                "else the config's num_threads, else the cores available)")


def _add_unsafe_sandbox_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--unsafe-sandbox", action="store_true",
                   help="run model-written code (MBPP) uncontained where bubblewrap is unavailable "
                        "(same as eval.sandbox=process; marked UNSAFE in every result)")


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    from .serve import ENGINES  # torch-free

    p.add_argument("--engine", default="transformers", help=f"one of {', '.join(ENGINES)} (default: transformers)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default=None, help="torch device (default: a GPU when visible, else the CPU)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: $PROMPTINTERN_API_KEY)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="server-side cap on a request's max_tokens (default: the run's answer length, else 512)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before a request without an answer gets 504")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="allow a non-loopback --host without an API key")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="promptintern",
        description="Internalize a recurring prompt into a model by progressive LoRA fine-tuning.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("show-prompt", help="print a task's full prompt and a table of tokens per part")
    p.add_argument("--task", required=True, help="nl2bash, mbpp, geoquery or a YAML task spec")
    p.add_argument("--index", type=int, default=0, help="test instance to show")
    p.add_argument("--k", type=int, default=3, help="retrieved examples to include")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--model", default="smollm2-135m", help="model whose tokenizer counts tokens")

    p = sub.add_parser("show-stages", help="print per-stage τ, k and prompt tokens of a config")
    _add_config_args(p)
    p.add_argument("--show-example", action="store_true", help="also print one rendered prompt per stage")

    for name, text in (("train", "prepare the stages and train the adapter"),
                       ("run", "prepare → train → infer on the test split → evaluate → report")):
        p = sub.add_parser(name, help=text)
        _add_config_args(p)
        _add_run_dir_args(p)
        if name == "run":
            _add_unsafe_sandbox_arg(p)

    p = sub.add_parser("infer", help="answer queries with a trained run (the method's own prompt)")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--input", required=True, help="JSONL with 'query' (and optional 'id') per line")
    p.add_argument("--output", required=True, help="predictions JSONL to write")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--prefix-cache", action="store_true", help="reuse the template's KV cache (batch 1)")
    p.add_argument("--no-resume", action="store_true", help="discard the predictions of an interrupted call")
    p.add_argument("--force", action="store_true", help="replace an existing --output file")

    p = sub.add_parser("queries", help="collect new, unlabelled queries (logs, held-out training pairs, a "
                                       "generator) for a teacher to answer; refuses validation/test queries")
    _add_config_args(p)
    p.add_argument("--out", required=True, help="JSONL of {'id', 'query', 'source'} to write")
    p.add_argument("--logs", default=None, help="JSONL of your own queries, one {'query'[, 'id']} a line")
    p.add_argument("--from-train", type=int, default=0, metavar="N",
                   help="N training pairs beyond the labelled data.train_size, answers dropped (benchmarks)")
    p.add_argument("--generate", default=None, metavar="builtin|lm|MODULE:FUNCTION",
                   help="the task's own generator (geoquery: value swap), a local LM shown the template and labelled "
                        "queries (lm), or your hook (labelled, n, seed) -> queries")
    p.add_argument("--generate-model", default="smollm2-135m", help="the LM of --generate lm")
    p.add_argument("--n", type=int, default=0, help="queries the generator writes")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out sample and the generator")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")

    p = sub.add_parser("label", help="a teacher run answers new queries with its own (full) prompt; "
                                     "answers that ran to the length cap or fail the task's check are dropped")
    p.add_argument("--teacher", required=True, help="run directory of the teacher (e.g. a full-prompt FT run)")
    p.add_argument("--queries", required=True, help="JSONL of {'query'[, 'id']} (e.g. from 'promptintern queries')")
    p.add_argument("--out", required=True, help="JSONL of {'id', 'query', 'answer', 'source', 'teacher'} to write")
    p.add_argument("--check", default=None, metavar="MODULE:FUNCTION",
                   help="your answer check (query, answer) -> bool (default: SQL tasks run the answer on "
                        "their database and need a row)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--samples", type=int, default=1, help="answers per query (> 1 needs --temperature > 0; "
                                                            "a query's repeated answers are kept once)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples at this temperature")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")

    p = sub.add_parser("eval", help="score a predictions file against a task's test split")
    p.add_argument("--task", required=True)
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of a built-in task, e.g. --task-option split=query for geoquery (repeatable)")
    p.add_argument("--predictions", required=True, help="JSONL of {'id', 'prediction'}")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="where to write the scores: a .json file, or a directory for "
                   "<predictions stem>.metrics.json (default: beside the predictions)")
    p.add_argument("--force", action="store_true", help="replace an existing metrics file")
    _add_unsafe_sandbox_arg(p)

    p = sub.add_parser("export", help="write the adapter or the merged model as a standard HF directory")
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--merge", action="store_true", help="merge the adapter into the base weights")
    p.add_argument("--format", choices=("hf", "gguf"), default="hf",
                   help="hf: HF directory (adapter, or merged with --merge); gguf: the merged model as one GGUF "
                        "file for llama.cpp / Ollama, with a Modelfile")
    p.add_argument("--quant", default="f16", help="GGUF weight type: f32, f16, bf16, q8_0 (converter), or "
                   "q4_k_m, q5_k_m, q4_0 ... (llama.cpp's quantizer, needs llama-cpp-python); default f16")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out directory")

    p = sub.add_parser("serve", help="serve a run or an export on an OpenAI-compatible endpoint "
                                     "(transformers serve, or llama.cpp for a GGUF export)")
    p.add_argument("path", metavar="RUN_OR_EXPORT", help="run directory (merged and cached first), merged export, "
                   "or with --engine llama.cpp a GGUF export or .gguf file")
    _add_serve_args(p)

    p = sub.add_parser("data", help="data utilities")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    d = dsub.add_parser("download", help="fetch the public NL2Bash and MBPP files")
    d.add_argument("--dest", default=None, help="target directory (default: $PROMPTINTERN_DATA_DIR or ./data)")

    p = sub.add_parser("compare", help="methods × seeds side by side: accuracy with intervals, speed at equal "
                                       "answer length, cost with prompt caching, break-even, verdict")
    p.add_argument("config", help="run config, or a compare config with run: and compare: sections")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: the config's, else "
                                                   "full-prompt,full-prompt+cache,query-only,compressed,promptintern)")
    p.add_argument("--seeds", type=int, default=None, help="training seeds 0..N-1 per method (default 3)")
    p.add_argument("--out", default=None, help="output directory (default: compare/<config name>)")
    p.add_argument("--passes", default="runs,speed,scaling",
                   help="which passes to run now (runs, speed, scaling); the report is always rebuilt")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a run-config field, or with the compare. prefix a compare setting (repeatable)")
    _add_unsafe_sandbox_arg(p)

    p = sub.add_parser("config", help="print every config field with its default and help")
    p.add_argument("config", nargs="?", help="also validate this YAML config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    for p in sub.choices.values():  # --threads after the command too; SUPPRESS keeps one given before
        p.add_argument("--threads", type=int, default=argparse.SUPPRESS, help=THREADS_HELP)
    return parser


def quiet_libraries() -> None:
    """Keep library chatter (weight-loading bars, deprecation notes) out of the user's terminal."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Through the environment, read when transformers is first imported: importing it here would
    # cost every command (`config`, any error message) half a second.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # already imported (a caller of main() in-process)
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def dispatch(args: argparse.Namespace) -> int:
    from . import commands

    handler = getattr(commands, "cmd_" + args.command.replace("-", "_"))
    return int(handler(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or bool(os.environ.get("PROMPTINTERN_DEBUG"))
    previous = None
    with contextlib.suppress(ValueError):  # ValueError: not the main thread (a caller of main())
        previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        return _main(args, debug)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace, debug: bool) -> int:
    try:
        quiet_libraries()
        with cli_threads(args.threads):
            return dispatch(args)
    except UserError as exc:
        if debug:
            raise
        print(f"promptintern: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (OSError, RuntimeError) as exc:
        line = None if debug else _os_error_line(exc)
        if line is None:
            raise
        print(f"promptintern: error: {line[0]}", file=sys.stderr)
        return line[1]
    except KeyboardInterrupt as exc:
        signum = exc.args[0] if exc.args and isinstance(exc.args[0], int) else signal.SIGINT
        print(f"promptintern: stopped by {signal.Signals(signum).name} (rerun with --resume to continue)",
              file=sys.stderr)
        return 128 + signum


# A path that is the wrong kind of thing, or cannot be read: the user's mistake, one line.
_PATH_ERRORS = (IsADirectoryError, NotADirectoryError, FileExistsError, FileNotFoundError, PermissionError)


def _os_error_line(exc: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit status) for a full disk or a path mistake; None for anything else."""
    from .errors import disk_full

    if disk_full(exc):
        where = getattr(exc, "filename", None) or "while writing"
        return f"disk full ({where}); free space and rerun with --resume", 6
    if isinstance(exc, _PATH_ERRORS) and exc.filename:
        return f"{exc.filename}: {exc.strerror or type(exc).__name__}", 2
    return None


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    """SIGTERM outside training (where a checkpoint is saved first): stop like Ctrl-C, one line."""
    raise KeyboardInterrupt(signum)


if __name__ == "__main__":
    sys.exit(main())
