"""The training text-embedding cache: each caption's T5/CLIP embeddings in CPU memory, bounded.

One caption's embeddings are ~4.2 MB in bf16 at 512 T5 tokens, so a dataset with tens of
thousands of distinct captions cannot keep them on the accelerator. The cache holds them in
CPU memory up to `max_bytes` and forgets the least recently used ones first; a forgotten caption
is simply encoded again when it is drawn. Entries move to the training device only for the
step that uses them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

Embeddings = tuple[torch.Tensor, ...]  # (prompt_embeds, pooled_prompt_embeds, text_ids)


def embeddings_bytes(embeddings: Embeddings) -> int:
    """Bytes the tensors of one caption's embeddings take."""
    return sum(t.numel() * t.element_size() for t in embeddings)


class TextEmbeddingCache:
    """Least-recently-used caption -> embeddings, in CPU memory, at most `max_bytes` in all.

    `max_bytes=0` keeps nothing (every caption is encoded each time it is drawn).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self._entries: OrderedDict[str, Embeddings] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, caption: str) -> bool:
        return caption in self._entries

    def values(self) -> list[Embeddings]:
        return list(self._entries.values())

    def get(
        self, caption: str, encode: Callable[[str], Embeddings], device: torch.device | str
    ) -> Embeddings:
        """The caption's embeddings on `device`: from the cache, or encoded (and kept)."""
        cached = self._entries.get(caption)
        if cached is not None:
            self.hits += 1
            self._entries.move_to_end(caption)
            return tuple(t.to(device, non_blocking=True) for t in cached)
        self.misses += 1
        encoded = encode(caption)
        self._put(caption, tuple(t.detach().to("cpu") for t in encoded))
        return tuple(t.to(device) for t in encoded)

    def _put(self, caption: str, embeddings: Embeddings) -> None:
        size = embeddings_bytes(embeddings)
        if size > self.max_bytes:
            return  # larger than the whole cache (or caching is off): not kept
        while self._entries and self.bytes + size > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= embeddings_bytes(old)
            self.evictions += 1
        self._entries[caption] = embeddings
        self.bytes += size
