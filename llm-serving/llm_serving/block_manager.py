"""Paged KV-cache bookkeeping: free list, block tables, ref counts, prefix caching.

Pure bookkeeping, no tensors: the agent owns the cache, this decides which block holds what.
Block 0 is the trash block (padding writes there) and is never handed out.

Prefix caching: a full block is identified by a chained hash of (previous block's hash, its
tokens), so equal hashes mean equal whole prefixes. Freed blocks keep their hash and stay
findable until they are reused; the free list is least-recently-freed first, and a sequence's
blocks are freed tail first, so shared prefixes (system prompts) are evicted last.
"""
from __future__ import annotations

from collections import OrderedDict

from .sequence import Sequence


def chain_hash(prev: int | None, tokens: list[int]) -> int:
    return hash((prev, tuple(tokens)))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.total = num_blocks - 1                     # usable blocks (0 is the trash block)
        self.ref = [0] * num_blocks
        self.block_hash: dict[int, int] = {}            # block -> hash, for full cached blocks
        self.cached: dict[int, int] = {}                # hash -> block
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(1, num_blocks))
        self.prefix_caching = enable_prefix_caching

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def num_used(self) -> int:
        return self.total - len(self.free)

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        """New blocks `seq` needs so its table covers `num_tokens` tokens."""
        return max(0, -(-num_tokens // self.block_size) - len(seq.block_table))

    def match_prefix(self, seq: Sequence) -> int:
        """Attach cached blocks for the longest cached prefix of a sequence with no blocks.

        At least one token is left to compute (the step must produce logits). Returns the number
        of tokens served from the cache (also stored in `seq.num_computed`).
        """
        assert not seq.block_table and seq.num_computed == 0
        if not self.prefix_caching:
            return 0
        bs = self.block_size
        prev = None
        for i in range((seq.num_tokens - 1) // bs):
            h = chain_hash(prev, seq.token_ids[i * bs:(i + 1) * bs])
            block = self.cached.get(h)
            if block is None:
                break
            self._take(block)
            seq.block_table.append(block)
            seq.block_hashes.append(h)
            prev = h
        seq.num_computed = len(seq.block_table) * bs
        return seq.num_computed

    def allocate(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow `seq`'s table to cover `num_tokens` tokens; False (and no change) if blocks run out."""
        need = self.blocks_needed(seq, num_tokens)
        if need > len(self.free):
            return False
        for _ in range(need):
            block, _ = self.free.popitem(last=False)
            h = self.block_hash.pop(block, None)
            if h is not None and self.cached.get(h) == block:
                del self.cached[h]                      # evict: its content is about to change
            self.ref[block] = 1
            seq.block_table.append(block)
        return True

    def commit(self, seq: Sequence) -> None:
        """Register blocks that became full (their K/V now computed) in the prefix cache."""
        if not self.prefix_caching:
            return
        bs = self.block_size
        full = seq.num_computed // bs
        prev = seq.block_hashes[-1] if seq.block_hashes else None
        for i in range(len(seq.block_hashes), full):
            h = chain_hash(prev, seq.token_ids[i * bs:(i + 1) * bs])
            seq.block_hashes.append(h)
            block = seq.block_table[i]
            if h not in self.cached:
                self.cached[h] = block
                self.block_hash[block] = h
            prev = h

    def release(self, seq: Sequence) -> None:
        """Drop `seq`'s references, tail first; blocks with no users return to the free list."""
        for block in reversed(seq.block_table):
            self.ref[block] -= 1
            if self.ref[block] == 0:
                self.free[block] = None
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed = 0

    def _take(self, block: int) -> None:
        if self.ref[block] == 0:
            del self.free[block]
        self.ref[block] += 1
