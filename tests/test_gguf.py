"""GGUF export round trip and the llama.cpp engine, on a tiny promptintern run.

- the export's chat template travels in the GGUF metadata and renders a raw query to the prompt
  ``promptintern infer`` serves, token for token under llama.cpp's tokenizer;
- greedy answers of the f16 export under llama.cpp equal ``promptintern infer``'s (HF, fp32);
- ``promptintern serve --engine llama.cpp``: the openai client with the API key gets those answers,
  without it a 401, ``max_tokens`` is capped, concurrent requests are all served; the server is
  always stopped.

The converter comes from llama-cpp-python's sdist (the cache, or ``pip download``); the llama.cpp
parts need llama-cpp-python installed (``pip install 'promptintern[gguf]'``, a 13-minute build from
source on 2 cores) and skip, with that reason, without it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from promptintern.cli import main
from promptintern.io import read_jsonl
from promptintern.models import resolve_model_path
from promptintern.serve import free_loopback_port, serve_command

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_fixtures import served_tiny_run  # noqa: E402

QUERIES = ["How many employees are there?", "List every department in Berlin", "Which projects have no staff?",
           'Names with "quotes" and {{ braces }} in ~/über']
NEW_TOKENS = 6
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed "
                                     "(make install-llama-cpp: built from source, ~13 min on 2 cores)")


@pytest.fixture(scope="module")
def gguf_run(tmp_path_factory) -> Path:
    """A tiny trained run (SQL task), its infer answers, and its f16 GGUF export."""
    from promptintern.gguf_export import ConverterMissing, find_converter

    if importlib.util.find_spec("sentencepiece") is None:
        pytest.skip("sentencepiece is not installed (llama.cpp's converter needs it: pip install 'promptintern[gguf]')")
    try:
        find_converter()
    except ConverterMissing as exc:
        pytest.skip(f"llama.cpp's converter is unavailable: {exc}")
    tmp = tmp_path_factory.mktemp("gguf")
    served_tiny_run(tmp, QUERIES, NEW_TOKENS, batch_size=1)
    assert main(["--threads", "1", "export", "--run", str(tmp / "run"), "--out", str(tmp / "gguf"),
                 "--format", "gguf", "--quant", "f16"]) == 0
    return tmp


def test_gguf_export_files_and_template_metadata(gguf_run):
    import gguf
    from transformers import AutoTokenizer

    out = gguf_run / "gguf"
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "model-f16.gguf", "serving.json"]
    reader = gguf.GGUFReader(str(out / "model-f16.gguf"))
    field = reader.fields["tokenizer.chat_template"]
    template = bytes(field.parts[field.data[0]]).decode()
    hf = AutoTokenizer.from_pretrained(str(resolve_model_path("tiny-random")))
    assert template != hf.chat_template and "namespace(msgs=[])" in template  # the wrapping template
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-f16.gguf\n") and "{{ .Prompt }}" in modelfile
    assert f"PARAMETER num_predict {NEW_TOKENS}" in modelfile
    assert json.loads((out / "serving.json").read_text())["max_tokens"] == NEW_TOKENS
    assert main(["export", "--run", str(gguf_run / "run"), "--out", str(out), "--format", "gguf"]) != 0  # no overwrite


@needs_llama_cpp
def test_llama_cpp_renders_and_tokenizes_like_infer_and_answers_the_same(gguf_run):
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    from promptintern.exporter import served_prompt
    from promptintern.prompt import chat_prompt_text

    expected = {r["id"]: r for r in read_jsonl(gguf_run / "infer.jsonl")}
    llm = Llama(model_path=str(gguf_run / "gguf" / "model-f16.gguf"), n_ctx=512, n_threads=1, verbose=False)
    render = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token="<|im_end|>",
                                 bos_token="")
    hf = AutoTokenizer.from_pretrained(str(resolve_model_path("tiny-random")))
    served = served_prompt(gguf_run / "run")
    for i, query in enumerate(QUERIES):
        raw = [{"role": "user", "content": query}]
        text = chat_prompt_text(hf, served.messages(query))  # what infer gives the model
        assert render(messages=raw).prompt == text
        ids = llm.tokenize(text.encode(), add_bos=False, special=True)
        assert ids == hf(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == expected[f"q{i}"]["input_tokens"]
        reply = llm.create_chat_completion(messages=raw, temperature=0, max_tokens=NEW_TOKENS)
        assert reply["usage"]["prompt_tokens"] == len(ids)
        assert reply["choices"][0]["message"]["content"].strip() == expected[f"q{i}"]["prediction"]


@contextlib.contextmanager
def llama_server(target: Path, log: Path, *extra: str) -> Iterator[tuple[subprocess.Popen, str]]:
    args = ["--threads", "1", "serve", str(target), "--engine", "llama.cpp", *extra]
    try:
        with serve_command(args, log, env={**os.environ, "PROMPTINTERN_API_KEY": ""}) as running:
            yield running
    except RuntimeError as exc:
        pytest.fail(str(exc))


@needs_llama_cpp
def test_llama_cpp_server_key_cap_and_concurrency(gguf_run, tmp_path):
    import openai

    expected = {r["id"]: r for r in read_jsonl(gguf_run / "infer.jsonl")}
    log = tmp_path / "serve.log"
    with llama_server(gguf_run / "gguf", log, "--api-key", "k3y", "--max-tokens", "4") as (proc, url):
        client = openai.OpenAI(base_url=url, api_key="k3y", max_retries=0, timeout=60)
        model = client.models.list().data[0].id
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()

        def ask(i: int):
            return client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUERIES[i]}],
                                                  max_tokens=100_000, temperature=0)

        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(ask, range(len(QUERIES))))
        for i, reply in enumerate(replies):
            assert reply.usage.completion_tokens <= 4  # the server's cap, not the request's 100,000
            answer = expected[f"q{i}"]["prediction"]
            got = reply.choices[0].message.content.strip()
            assert answer.startswith(got) if reply.usage.completion_tokens == 4 else got == answer, (i, got, answer)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    text = log.read_text()
    assert f"ready: {url}" in text and "server stopped" in text


@needs_llama_cpp
def test_k_quant_is_made_by_llama_cpps_quantizer_and_loads(gguf_run, tmp_path):
    from llama_cpp import Llama

    from promptintern.gguf_export import quantize

    f16 = gguf_run / "gguf" / "model-f16.gguf"
    quantize(f16, tmp_path / "q4_k_m.gguf", "q4_k_m", threads=1)
    assert 0 < (tmp_path / "q4_k_m.gguf").stat().st_size < f16.stat().st_size
    llm = Llama(model_path=str(tmp_path / "q4_k_m.gguf"), n_ctx=256, n_threads=1, verbose=False)
    assert llm.metadata["tokenizer.chat_template"] == Llama(model_path=str(f16), vocab_only=True, verbose=False
                                                            ).metadata["tokenizer.chat_template"]
    assert llm.create_chat_completion(messages=[{"role": "user", "content": QUERIES[0]}], max_tokens=2,
                                      temperature=0)["usage"]["completion_tokens"] >= 1


@needs_llama_cpp
def test_a_model_that_cannot_load_is_two_lines_not_a_traceback(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"not a gguf")
    done = subprocess.run([sys.executable, "-m", "promptintern.cli", "serve", str(tmp_path), "--engine", "llama.cpp",
                           "--port", str(free_loopback_port())], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "llama.cpp could not serve" in done.stderr and "the server stopped by itself (exit code 1)" in done.stderr
