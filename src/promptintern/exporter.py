"""Export a trained run as a standard Hugging Face directory: the LoRA adapter or a merged model.

- adapter (default): ``adapter_config.json`` + ``adapter_model.safetensors`` (+ the tokenizer,
  so the chat template travels with it). ``PeftModel.from_pretrained(base, out)`` loads it, and
  vLLM serves it with ``--enable-lora --lora-modules name=out`` on top of the base model.
- merged (``merge=True``): the LoRA update folded into the base weights (``merge_and_unload``),
  saved with tokenizer, chat template and generation config; ``AutoModelForCausalLM`` loads it
  and any server that serves the base serves it, with no LoRA support needed.

Both get a README.md model card and ``checksums.json`` (SHA-256 of every file,
:mod:`promptintern.checksums`); the run's adapter is verified before it is exported. Both get a README.md model card (base model, schedule, hyperparameters, metrics when
``run_dir/metrics.json`` exists).

The query wrapping travels with the model. A method served with a fixed prompt around the
query (system message, the template at the method's serving rate τ, ``query_format``; no
retrieved examples) gets a chat template that applies it: a plain
``[{"role": "user", "content": query}]`` then renders the same text (and token ids) as
``promptintern infer`` gives the model, so any OpenAI-compatible server that uses the
tokenizer's chat template answers raw queries as trained. The wrapper is a Jinja prelude that
rewrites ``messages`` (system message added when the client sends none, each user turn
wrapped) before the base template's own body, so the base's turn markup is kept as is; the
export checks the rendering on a probe query and refuses a base template it cannot wrap.
Methods served with retrieved examples (k > 0) cannot be wrapped by a template (the examples
depend on the query): their export keeps the base chat template and the card says to send
the full prompt. The output directory is written beside ``out`` and renamed
into place, so a crash never leaves a half-exported model.

``base_model_name_or_path`` (our choice): for an alias (``smollm2-135m``, ``tiny-random``) it
is the alias's resolved local HF directory. The alias itself means nothing to peft or vLLM,
and no hub checkpoint is guaranteed to equal the base we trained on (``smollm2-135m`` is
converted from the bundled GGUF), so the only loadable and faithful base is the local one. A
hub id or local directory given as the model is kept as given (directories made absolute).
The model card records the alias too. On another machine, pass the base explicitly or export
with ``merge=True``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checksums import directory_problem, write_checksums
from .errors import ModelError, RunDirError
from .io import atomic_dir, read_json, write_json, write_text

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
SERVING_FILE = "serving.json"  # the serving cap beside the model (read by promptintern serve)
QUERY_SLOT = "\u241eQUERY\u241e"  # stands for the query while the served prompt is cut around it
PROBE_QUERY = 'list "all" files {{ x }} in ~/über\n{% raw %}'  # quotes, Jinja syntax, non-ASCII, newline
SAFE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;!?()-_/'")


@dataclass(frozen=True)
class ServedPrompt:
    """How a run's method is served: the system message and the user turn cut at the query.

    ``wrappable`` is False for methods served with retrieved examples (k > 0).
    """

    method: str
    tau: float
    k: int
    system: str
    user_parts: tuple[str, ...]

    @property
    def wrappable(self) -> bool:
        return self.k == 0

    def messages(self, query: str) -> list[dict[str, str]]:
        """The chat messages ``promptintern infer`` builds for ``query`` (when wrappable)."""
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return [*msgs, {"role": "user", "content": query.join(self.user_parts)}]


def served_prompt(run_dir: Path) -> ServedPrompt | None:
    """The run's serving prompt, built by the same functions as ``infer``; None without a config."""
    from .config import load_config
    from .methods import plan
    from .pipeline import Templates
    from .prompt import to_messages
    from .stages import build_prompt
    from .tasks import get_task

    config_path = Path(run_dir) / "config.yaml"
    if not config_path.is_file():
        return None
    cfg = load_config(str(config_path))
    task = get_task(cfg.task, **cfg.task_options)
    p = plan(cfg.method, cfg.schedule, cfg.compressed_tau)
    template = Templates(task, cfg).at(p.serve_tau) if p.serve_k == 0 else None
    if template is None:
        return ServedPrompt(p.name, p.serve_tau, p.serve_k, task.format.system, ())
    msgs = to_messages(build_prompt(task, QUERY_SLOT, template, [], 0), task.format)
    system = msgs[0]["content"] if msgs[0]["role"] == "system" else ""
    return ServedPrompt(p.name, p.serve_tau, p.serve_k, system, tuple(msgs[-1]["content"].split(QUERY_SLOT)))


def _jinja_string(text: str) -> str:
    """``text`` as a Jinja string literal (everything but plain characters escaped as code points)."""
    return '"' + "".join(c if c in SAFE_CHARS else f"\\U{ord(c):08x}" for c in text) + '"'


def wrapping_chat_template(base_template: str, served: ServedPrompt) -> str:
    """``base_template`` preceded by a prelude that turns raw user turns into the served prompt.

    The prelude adds the system message when the conversation has none and wraps each user
    turn's content; an explicit system message from the client is kept.
    """
    content = " ~ m['content'] ~ ".join(_jinja_string(part) for part in served.user_parts)
    head = ("{% set ns = namespace(msgs=[]) %}"
            "{% if messages and messages[0]['role'] == 'system' %}{% set ns.msgs = [] %}")
    if served.system:
        head += "{% else %}{% set ns.msgs = [{'role': 'system', 'content': " + _jinja_string(served.system) + "}] %}"
    head += ("{% endif %}{% for m in messages %}{% if m['role'] == 'user' %}"
             "{% set ns.msgs = ns.msgs + [{'role': 'user', 'content': " + content + "}] %}"
             "{% else %}{% set ns.msgs = ns.msgs + [m] %}{% endif %}{% endfor %}"
             "{% set messages = ns.msgs %}")
    return head + base_template


def apply_served_prompt(tokenizer: Any, served: ServedPrompt | None) -> None:
    """Give ``tokenizer`` the wrapping chat template (when the method allows it), checked on a probe."""
    from .prompt import chat_prompt_text

    if served is None or not served.wrappable:
        return
    expected = chat_prompt_text(tokenizer, served.messages(PROBE_QUERY))
    tokenizer.chat_template = wrapping_chat_template(tokenizer.chat_template, served)
    if chat_prompt_text(tokenizer, [{"role": "user", "content": PROBE_QUERY}]) != expected:
        raise ModelError("the base model's chat template cannot carry the served prompt; export without it "
                         "is not supported for this model")


def base_reference(model_name: str) -> str:
    """What an exported adapter names as its base (see the module docstring)."""
    from .models import resolve_model_path

    return resolve_model_path(model_name)


def export(
    run_dir: Path, out: Path, merge: bool = False, model_card: dict[str, Any] | None = None, force: bool = False
) -> Path:
    """Write the run's adapter (or, with ``merge``, the merged model) to ``out``; returns ``out``.

    ``model_card`` adds entries (e.g. ``{"task": "nl2bash"}``) to the README; ``force``
    replaces a non-empty ``out``.
    """
    run_dir, out = Path(run_dir), Path(out)
    adapter = run_dir / "adapter"
    if not all((adapter / name).is_file() for name in ADAPTER_FILES):
        raise RunDirError(f"{run_dir} has no trained adapter (no {adapter.name}/); train it first")
    problem = directory_problem(adapter)
    if problem is not None:  # never export damaged weights
        from .serving_checks import rebuild_hint

        raise RunDirError(f"{adapter}: {problem}; {rebuild_hint(adapter)}")
    config_path = run_dir / "train" / "config.json"
    if not config_path.is_file():
        raise RunDirError(f"{run_dir} has no train/config.json; it was not trained by promptintern")
    target, run = out.resolve(), run_dir.resolve()
    if target in (run, adapter.resolve()) or target in run.parents:
        raise RunDirError(f"{out}: export to a directory other than the run directory, its adapter or their parents")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise RunDirError(f"{out} already exists and is not empty; use --force to replace it")
    record = read_json(config_path)
    model_name = record["model"]
    base = base_reference(model_name)
    served = served_prompt(run_dir)
    with atomic_dir(out) as tmp:
        if merge:
            _write_merged(model_name, adapter, tmp, served)
        else:
            _write_adapter(model_name, adapter, base, tmp, served)
        metrics_path = run_dir / "metrics.json"
        metrics = read_json(metrics_path) if metrics_path.is_file() else None
        history_path = run_dir / "train" / "history.json"
        history = read_json(history_path) if history_path.is_file() else None
        write_text(tmp / "README.md",
                   model_card_text(record, base, merge, history, metrics, model_card or {}, served))
        write_json(tmp / SERVING_FILE, serving_record(run_dir, served))
        write_checksums(tmp)  # what a reader of the export can verify it against
    return out


def serving_record(run_dir: Path, served: ServedPrompt | None) -> dict[str, Any]:
    """What a server of the export needs to know: the ``max_tokens`` cap (the run's answer length)."""
    return {"max_tokens": served_max_tokens(run_dir), "method": served.method if served else None,
            "raw_query": bool(served and served.wrappable)}


def served_max_tokens(run_dir: Path) -> int | None:
    """The run's ``infer.max_new_tokens`` as a number ('auto': from its training answers); None without a config."""
    from .answer_length import resolve_infer_args
    from .config import load_config
    from .pipeline import check

    config_path = Path(run_dir) / "config.yaml"
    if not config_path.is_file():
        return None
    cfg = load_config(str(config_path))
    if isinstance(cfg.infer.max_new_tokens, int):
        return cfg.infer.max_new_tokens
    checked = check(cfg)
    return int(resolve_infer_args(cfg.infer, cfg.model, checked.task, checked.train).max_new_tokens)


def _write_adapter(model_name: str, adapter: Path, base: str, dest: Path, served: ServedPrompt | None) -> None:
    from .models import load_tokenizer

    shutil.copy2(adapter / "adapter_model.safetensors", dest / "adapter_model.safetensors")
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base
    write_json(dest / "adapter_config.json", config)
    tokenizer = load_tokenizer(model_name)
    apply_served_prompt(tokenizer, served)
    tokenizer.save_pretrained(str(dest))


def _write_merged(model_name: str, adapter: Path, dest: Path, served: ServedPrompt | None) -> None:
    import torch

    from .inference import load_for_serving

    # fp32 on the CPU: the merge is exact there (in bf16 it would round most of the update away)
    merged, tokenizer = load_for_serving(model_name, adapter, merge=True, device="cpu", dtype=torch.float32)
    gen = merged.generation_config
    if gen is not None and gen.eos_token_id is None and tokenizer.eos_token_id is not None:
        gen.eos_token_id = tokenizer.eos_token_id  # so generation stops at the end of the turn
    merged.save_pretrained(str(dest))
    apply_served_prompt(tokenizer, served)
    tokenizer.save_pretrained(str(dest))


# ---------------------------------------------------------------- model card


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _metrics_section(metrics: dict[str, Any]) -> str:
    systems = metrics.get("systems") or {}
    if not systems:
        return ""
    # the scores sit in each system's "metrics" dict: they come first, then the other plain values
    flat = {name: {**(values.get("metrics") or {}), **values} for name, values in systems.items()}
    columns: list[str] = []
    for name, values in flat.items():
        for key in [*(systems[name].get("metrics") or {}), *values]:
            if isinstance(values[key], (int, float, str, bool)) and key not in columns:
                columns.append(key)
    rows = [[name, *[values.get(c, "") for c in columns]] for name, values in flat.items()]
    head = f"Task `{metrics.get('task', '?')}`, metric `{metrics.get('metric', '?')}`, " \
           f"{metrics.get('n_test', '?')} test instances (from `metrics.json`).\n\n"
    return "## Evaluation\n\n" + head + _table(["system", *columns], rows) + "\n"


def _serving_section(served: ServedPrompt | None) -> str:
    """What a client sends: the raw query (wrapped by the chat template) or the full prompt."""
    head = "## Prompt format\n\n"
    if served is None:
        return head + ("The run directory records no config, so the served prompt is unknown: the chat template "
                       "is the base model's; send the prompt the model was trained on.\n")
    if not served.wrappable:
        return head + (f"Method `{served.method}` is served with the template at τ={served.tau:g} and "
                       f"{served.k} retrieved examples per query, which a chat template cannot add: the chat "
                       "template is the base model's; send the full prompt (as `promptintern infer` renders it) "
                       "as the user message.\n")
    wrapped = served.messages("{query}")
    system = (f"the system message `{wrapped[0]['content']}` when the request has none (a request's own "
              "system message is kept), and ") if served.system else ""
    return head + (f"Method `{served.method}` is served with the query alone (template at τ={served.tau:g}, no "
                   "examples). The tokenizer's chat template carries that wrapping: send the raw query as the "
                   f"user message, `[{{\"role\": \"user\", \"content\": query}}]`; the template adds {system}"
                   "wraps each user turn as below, so the rendered prompt (token for token) is the one "
                   "`promptintern infer` serves.\n\n```text\n" + wrapped[-1]["content"] + "\n```\n")


def model_card_text(
    record: dict[str, Any], base: str, merged: bool, history: dict[str, Any] | None,
    metrics: dict[str, Any] | None, extra: dict[str, Any], served: ServedPrompt | None = None,
) -> str:
    """The README.md of an export: what it is, how it was trained, how it scores, how to load it."""
    kind = "merged model" if merged else "LoRA adapter"
    lora, train = record.get("lora", {}), record.get("train", {})
    done = {e["stage"]: e for e in (history or {}).get("stages", [])}
    stage_rows = [
        [s["index"], s["tau"], s["k"], s["n_records"], done.get(s["index"], {}).get("steps", ""),
         done.get(s["index"], {}).get("train_loss", "")]
        for s in record.get("stages", [])
    ]
    front = ["---", f"library_name: {'transformers' if merged else 'peft'}",
             "tags:", "- promptintern", "- lora", "- text-generation", "---", ""]
    parts = [
        "\n".join(front),
        f"# PromptIntern {kind}\n\n"
        "Fine-tuned with promptintern: progressive LoRA fine-tuning that internalizes a recurring prompt "
        "(template and few-shot examples) into the weights, stage by stage, so that the model answers "
        "from the query alone (PromptIntern, Zou et al., Findings of EMNLP 2024).\n",
        f"## Base model\n\n- model: `{record.get('model')}`\n- loaded from: `{base}`\n",
    ]
    if extra:
        parts.append("## Run\n\n" + "\n".join(f"- {k}: {_fmt(v)}" for k, v in extra.items()) + "\n")
    parts.append("## Training schedule\n\nOne LoRA adapter trained stage after stage; τ is the template "
                 "rate, k the number of retrieved examples in the prompt.\n\n"
                 + _table(["stage", "τ", "k", "records", "steps", "train loss"], stage_rows) + "\n")
    hp = {**{f"lora.{k}": v for k, v in lora.items()},
          **{f"train.{k}": v for k, v in train.items() if k != "stage_overrides" and v is not None}}
    if train.get("stage_overrides"):
        hp["train.stage_overrides"] = json.dumps(train["stage_overrides"], sort_keys=True)
    parts.append("## Hyperparameters\n\n" + "\n".join(f"- {k}: {_fmt(v)}" for k, v in hp.items()) + "\n")
    if history is not None:
        parts.append(f"Training wall time: {history.get('train_wall_s', 0.0):.1f} s.\n")
    if metrics:
        parts.append(_metrics_section(metrics))
    if merged:
        usage = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                 "model = AutoModelForCausalLM.from_pretrained(PATH)\n"
                 "tokenizer = AutoTokenizer.from_pretrained(PATH)")
    else:
        usage = ("from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                 f"base = AutoModelForCausalLM.from_pretrained({base!r})\n"
                 "model = PeftModel.from_pretrained(base, PATH)\n"
                 "tokenizer = AutoTokenizer.from_pretrained(PATH)")
    parts.append(_serving_section(served))
    parts.append("## Usage\n\nPrompt through the tokenizer's chat template (see *Prompt format*).\n\n"
                 "```python\n" + usage + "\n```\n")
    return "\n".join(parts)
