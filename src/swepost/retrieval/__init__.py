"""Retrieval over a corpus: the corpus format, the on-disk BM25 index, and the client of a Search-R1-compatible
retriever server. The search environment (envs/search.py), the `corpus index` stage and the retriever server
(serve/retriever.py) share it; it imports nothing above it.

Every backend answers the same two questions (the `Retriever` protocol in documents.py): `search(queries, topk)`,
one ranked list of (document, score) per query, and `get(doc_id)`, one document or None.
"""
