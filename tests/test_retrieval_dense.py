"""The dense extra (faiss + sentence-transformers) with a tiny encoder built here (no hub download): an index
beside the BM25 one, nearest passages by cosine, documents and ids from the BM25 store, the stage and the CLI, and
the message that says how to install the extra."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from swepost.errors import BadInput

ROWS = [
    {"id": "py", "contents": '"Python"\nPython is a programming language created by Guido van Rossum.'},
    {"id": 7, "title": "Rust", "text": "Rust is a systems language focused on memory safety."},
    {"id": "tv", "contents": '"Tantivy"\nTantivy is a search engine library written in Rust.'},
    {"id": "aio", "title": "asyncio", "text": "asyncio runs coroutines on an event loop."},
]


def _require_extra() -> None:
    try:
        import faiss  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError as e:
        why = f"the [dense] extra is not installed ({e.name}): pip install -e '.[dense]'"
        if os.environ.get("SWEPOST_REQUIRE_DENSE") == "1":
            pytest.fail(f"{why} (SWEPOST_REQUIRE_DENSE=1, so this fails instead of skipping)", pytrace=False)
        pytest.skip(f"{why}; set SWEPOST_REQUIRE_DENSE=1 to fail instead")


def tiny_encoder(folder: Path) -> Path:
    """A 1-layer BERT (random weights, a WordPiece vocabulary trained here) as a sentence-transformers folder."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, trainers
    from tokenizers import models as token_models
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tokenizer = Tokenizer(token_models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    text = " ".join(json.dumps(r) for r in ROWS)
    tokenizer.train_from_iterator([text] * 5, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=fast.vocab_size, hidden_size=32, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=64, max_position_embeddings=128))
    raw = folder / "raw"
    bert.save_pretrained(raw)
    fast.save_pretrained(raw)
    SentenceTransformer(modules=[Transformer(str(raw), max_seq_length=128), Pooling(32)]).save(str(folder / "st"))
    return folder / "st"


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    _require_extra()
    return tiny_encoder(tmp_path_factory.mktemp("encoder"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return path


def test_dense_round_trip(encoder, corpus, tmp_path):
    from swepost.retrieval.dense import DENSE_FILE, build_dense, open_dense_index
    from swepost.retrieval.index import build_index

    build_index(corpus, tmp_path / "index")
    stats = build_dense(corpus, tmp_path / "index", model=str(encoder), query_prefix="query: ",
                        passage_prefix="")
    assert stats["dense_passages"] == 4 and (tmp_path / "index" / DENSE_FILE).is_file()
    dense = open_dense_index(tmp_path / "index")
    assert len(dense) == 4
    dense.meta["query_prefix"] = ""  # a passage's own text as the query: its embedding, cosine 1
    contents = [dense.get(str(r["id"]))["contents"] for r in ROWS]
    results = dense.search(contents, 2)
    assert [hits[0][0]["id"] for hits in results] == ["py", "7", "tv", "aio"]
    assert all(abs(hits[0][1] - 1.0) < 1e-4 and hits[0][1] >= hits[1][1] for hits in results)
    assert dense.search(["", "   "], 3) == [[], []]
    assert len(dense.search(["rust"], 10)[0]) == 4  # no more hits than passages
    assert dense.get("7")["title"] == "Rust" and dense.get("nope") is None


def test_a_trained_faiss_type_and_a_bad_one(encoder, corpus, tmp_path):
    from swepost.retrieval.dense import build_dense, open_dense_index
    from swepost.retrieval.index import build_index

    build_index(corpus, tmp_path / "index")
    build_dense(corpus, tmp_path / "index", model=str(encoder), factory="IVF1,Flat")  # needs training first
    assert len(open_dense_index(tmp_path / "index")) == 4
    with pytest.raises(BadInput, match="dense_factory"):
        build_dense(corpus, tmp_path / "index", model=str(encoder), factory="NoSuchIndex")
    with pytest.raises(BadInput, match="dense_model: cannot load the encoder"):
        build_dense(corpus, tmp_path / "index", model=str(tmp_path / "no-encoder"))


@pytest.mark.slow
def test_stage_and_cli_build_and_search_the_dense_part(encoder, corpus, store, swepost):
    from swepost.retrieval.dense import open_dense_index
    from swepost.stages.corpus import CorpusIndexConfig, run_corpus_index

    art = run_corpus_index(CorpusIndexConfig(corpus=corpus, dense_model=str(encoder)), store, progress=False)
    assert art.stats["dense_passages"] == 4 and art.stats["passages"] == 4
    assert open_dense_index(art.path).meta["model"] == str(encoder.resolve())
    assert store.verify(art) == []
    r = swepost("corpus", "search", art.id, "Rust memory safety", "--dense", "--json", check=0)
    assert len(json.loads(r.stdout)["result"][0]) == 4
    r = swepost("corpus", "search", art.id, "Rust", check=0)  # the BM25 part is still there
    assert "Rust" in r.stdout


def test_without_the_extra_the_message_says_how_to_install_it(corpus, tmp_path, monkeypatch):
    from swepost.retrieval.dense import require_dense
    from swepost.stages.corpus import CorpusIndexConfig, run_corpus_index

    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError, as when not installed
    with pytest.raises(BadInput, match=r"needs faiss-cpu, which is not installed: pip install -e '.\[dense\]'"):
        require_dense()
    from swepost.artifacts import ArtifactStore

    store = ArtifactStore(tmp_path / "home")
    with pytest.raises(BadInput, match="faiss-cpu"):  # before any BM25 work
        run_corpus_index(CorpusIndexConfig(corpus=corpus, dense_model="some/encoder"), store, progress=False)
    assert not (tmp_path / "home" / "artifacts").exists()
