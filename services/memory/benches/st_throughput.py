"""sentence-transformers' throughput on this machine, for comparison with
`cargo bench -p amaos-memory --bench memory`: sentences/s at batch 32 on the
CPU, over the same generated sentences.

    python st_throughput.py <model dir>
"""
import sys
import time

import torch
from sentence_transformers import SentenceTransformer

SENTENCES = [
    f"memory item {i}: the agent noted that task {i % 17} needs {i % 5} more steps"
    for i in range(512)
]

model = SentenceTransformer(sys.argv[1], device="cpu")
model.encode(SENTENCES[:64], batch_size=32)
start = time.perf_counter()
model.encode(SENTENCES, batch_size=32)
elapsed = time.perf_counter() - start
print(f"sentence-transformers: {len(SENTENCES) / elapsed:.1f} sentences/s at batch 32 "
      f"({torch.get_num_threads()} threads)")
