"""Generates reference.json: all-MiniLM-L6-v2 embeddings computed by
sentence-transformers, which the Rust embedder must reproduce.

Run once, in a throwaway virtualenv with sentence-transformers installed:
    python make_reference.py <model dir> > reference.json
"""
import json
import sys

from sentence_transformers import SentenceTransformer

SENTENCES = [
    "The researcher summarised three papers on vector databases.",
    "Rust gives memory safety without a garbage collector.",
    "A cat sat on the warm windowsill all afternoon.",
    "Quarterly revenue grew by twelve percent year over year.",
    "hello",
    "Tiered memory moves cold items from Redis into a vector store after their TTL expires, "
    "so that recent turns stay fast while older knowledge remains searchable by meaning.",
    "Ünïcödé, punctuation!? and numbers 12345 mixed together.",
]

model = SentenceTransformer(sys.argv[1], device="cpu")
vectors = model.encode(SENTENCES, batch_size=32, normalize_embeddings=False)
json.dump(
    {
        "model": "all-MiniLM-L6-v2",
        "generator": "sentence-transformers " + __import__("sentence_transformers").__version__,
        "items": [
            {"text": s, "embedding": [float(x) for x in v]}
            for s, v in zip(SENTENCES, vectors)
        ],
    },
    sys.stdout,
)
