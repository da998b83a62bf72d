"""``promptintern export --format gguf``: the merged model as one GGUF file, plus an Ollama Modelfile.

GGUF is what llama.cpp, Ollama and LM Studio load, and what small models are served from on a
CPU. Nothing here writes the format: the merged HF export (:func:`promptintern.exporter.export`,
whose chat template wraps a raw query into the trained prompt) is converted by llama.cpp's own
``convert_hf_to_gguf.py``, which copies that chat template into the file's metadata
(``tokenizer.chat_template``) and writes with llama.cpp's ``gguf`` package.

Where the converter comes from, without copying it into this repository: llama-cpp-python's
source distribution on the package registry carries llama.cpp's source tree, converter
(``convert_hf_to_gguf.py``, its ``conversion`` package) and ``gguf-py`` included. The first
export runs ``pip download`` for that sdist (the version of the installed llama-cpp-python, else
:data:`LLAMA_CPP_PYTHON_VERSION`; pip answers from its cache when the package was built here),
and unpacks just those three entries into ``<cache>/llama.cpp/<version>/``. ``$PROMPTINTERN_LLAMA_CPP``
names an existing llama.cpp checkout instead (offline machines).

Quantizations: ``f32``, ``f16``, ``bf16`` and ``q8_0`` come straight from the converter; the
k-quants and the other llama.cpp types (``q4_k_m``, ``q5_k_m``, ``q4_0`` ...) are made from the f16
file by llama.cpp's own quantizer through llama-cpp-python (``llama_model_quantize``), so they need
it installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from .errors import ModelError, UserError

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # the llama-cpp-python whose converter the tests ran
LLAMA_CPP_ENV = "PROMPTINTERN_LLAMA_CPP"
CONVERTER_ENTRIES = ("convert_hf_to_gguf.py", "conversion", "gguf-py")
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
QUANTIZER_TYPES = {  # llama.cpp's llama_ftype values (include/llama.h)
    "q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9, "q2_k": 10, "q3_k_m": 12, "q4_k_s": 14, "q4_k_m": 15,
    "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18,
}
QUANTS = (*CONVERTER_TYPES, *QUANTIZER_TYPES)
GGUF_NAME = "model-{quant}.gguf"
GGUF_USAGE = """
## GGUF ({quant})

`{name}` is the merged model above converted by llama.cpp's `convert_hf_to_gguf.py`; its
`tokenizer.chat_template` metadata is the wrapping chat template, so llama.cpp renders a raw user
message into the trained prompt. The `Usage` above is for the HF directory this was made from.

```bash
promptintern serve --engine llama.cpp .          # OpenAI-compatible, API key, max_tokens cap
ollama create my-model -f Modelfile && ollama run my-model "your query"
```
"""


class ConverterMissing(UserError):
    """llama.cpp's converter could not be found or fetched."""


def llama_cpp_version() -> str:
    """The installed llama-cpp-python's version, else the one this project tested."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return LLAMA_CPP_PYTHON_VERSION


def find_converter(fetch: bool = True) -> Path:
    """The llama.cpp directory holding ``convert_hf_to_gguf.py`` (see the module docstring)."""
    from .identity import cache_root

    env = os.environ.get(LLAMA_CPP_ENV)
    if env:
        tree = Path(env).expanduser()
        if not (tree / CONVERTER_ENTRIES[0]).is_file():
            raise ConverterMissing(f"${LLAMA_CPP_ENV}={env}: no {CONVERTER_ENTRIES[0]} there")
        return tree
    version = llama_cpp_version()
    tree = cache_root() / "llama.cpp" / version
    if all((tree / entry).exists() for entry in CONVERTER_ENTRIES):
        return tree
    if not fetch:
        raise ConverterMissing(f"llama.cpp's converter is not in {tree}")
    return _fetch_converter(version, tree)


def _fetch_converter(version: str, tree: Path) -> Path:
    """Unpack the converter from llama-cpp-python's sdist into ``tree`` (published atomically)."""
    from .io import atomic_dir

    with tempfile.TemporaryDirectory(prefix="promptintern-sdist-") as scratch:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               "--dest", scratch, f"llama-cpp-python=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(scratch).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 or not sdists:
            last = (done.stderr.strip().splitlines() or ["no sdist downloaded"])[-1]
            raise ConverterMissing(f"cannot fetch llama-cpp-python {version}'s source for llama.cpp's converter "
                                   f"({last}); set ${LLAMA_CPP_ENV} to a llama.cpp checkout")
        with tarfile.open(sdists[0]) as tar, atomic_dir(tree) as tmp:
            prefix = f"{tar.getnames()[0].split('/')[0]}/vendor/llama.cpp/"
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                       and m.name[len(prefix):].split("/")[0] in CONVERTER_ENTRIES]
            for m in members:
                m.name = m.name[len(prefix):]
            tar.extractall(tmp, members=members, filter="data")
    return tree


def convert(hf_dir: Path, out_file: Path, outtype: str) -> None:
    """Run llama.cpp's converter on ``hf_dir`` (one-line error with its last message on failure)."""
    converter = find_converter() / CONVERTER_ENTRIES[0]
    cmd = [sys.executable, str(converter), str(hf_dir), "--outfile", str(out_file), "--outtype", outtype]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not out_file.is_file():
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()] or ["no output"]
        raise ModelError(f"llama.cpp's converter failed on {hf_dir}: {lines[-1]}")


def quantize(f16_file: Path, out_file: Path, quant: str, threads: int) -> None:
    """llama.cpp's quantizer (through llama-cpp-python) from an f16 GGUF."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError(f"--quant {quant} needs llama-cpp-python (pip install 'promptintern[gguf]'); "
                        f"{', '.join(CONVERTER_TYPES)} do not") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTIZER_TYPES[quant]
    params.nthread = threads
    if llama_cpp.llama_model_quantize(str(f16_file).encode(), str(out_file).encode(), params) != 0:
        raise ModelError(f"llama.cpp could not quantize {f16_file} to {quant}")


def ollama_modelfile(tokenizer: Any, gguf_name: str, max_tokens: int | None) -> str:
    """An Ollama Modelfile whose Go ``TEMPLATE`` renders the same prompt as the GGUF's chat template.

    The template is cut from the exported tokenizer's own rendering of a one-turn conversation
    (system message and wrapping included), with the query replaced by ``{{ .Prompt }}``.
    """
    from .exporter import QUERY_SLOT
    from .prompt import chat_prompt_text

    text = chat_prompt_text(tokenizer, [{"role": "user", "content": QUERY_SLOT}])
    if text.count(QUERY_SLOT) != 1:
        raise ModelError("the chat template does not render the query exactly once; cannot write a Modelfile")
    go = text.replace("{{", '{{ "{{" }}').replace(QUERY_SLOT, "{{ .Prompt }}")
    stops = {t for t in (tokenizer.eos_token, getattr(tokenizer, "pad_token", None)) if t}
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{go}"""', "PARAMETER temperature 0"]
    lines += [f'PARAMETER stop "{t}"' for t in sorted(stops)]
    if max_tokens:
        lines.append(f"PARAMETER num_predict {max_tokens}")
    return "\n".join(lines) + "\n"


def export_gguf(run_dir: Path, out: Path, quant: str = "f16", force: bool = False, threads: int = 1) -> Path:
    """Write ``out/model-<quant>.gguf``, ``out/Modelfile``, the model card and ``serving.json``."""
    from .exporter import SERVING_FILE, export
    from .io import atomic_dir, read_json, write_text
    from .models import load_tokenizer

    if quant not in QUANTS:
        raise UserError(f"--quant {quant!r}: choose one of {', '.join(QUANTS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise UserError(f"{out} already exists and is not empty; use --force to replace it")
    find_converter()  # fail before the merge when the converter cannot be had
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out.resolve().parent) as scratch:
        hf = export(run_dir, Path(scratch) / "hf", merge=True)
        with atomic_dir(out) as tmp:
            name = GGUF_NAME.format(quant=quant)
            if quant in CONVERTER_TYPES:
                convert(hf, tmp / name, quant)
            else:
                convert(hf, Path(scratch) / "f16.gguf", "f16")
                quantize(Path(scratch) / "f16.gguf", tmp / name, quant, threads)
            shutil.copy2(hf / SERVING_FILE, tmp / SERVING_FILE)
            cap = read_json(hf / SERVING_FILE).get("max_tokens")
            write_text(tmp / "Modelfile", ollama_modelfile(load_tokenizer(str(hf)), name, cap))
            card = (hf / "README.md").read_text(encoding="utf-8")
            write_text(tmp / "README.md", card + GGUF_USAGE.format(name=name, quant=quant))
    return out / name
