"""Paged KV-cache bookkeeping: which cache blocks each sequence holds; knows nothing of tensors."""

from __future__ import annotations

SCRATCH_BLOCK = 0  # never handed out: padding rows of a decode step and padded prompt positions write here


class BlockManager:
    """A free list of `n_blocks` blocks of `block_size` tokens (block 0 reserved as scratch).

    A sequence holds ceil(tokens / block_size) blocks and gets one more each time it grows past a block edge;
    finished or preempted sequences give theirs back. Freed blocks are reused last-in first-out (warm in L2).
    """

    def __init__(self, n_blocks: int, block_size: int):
        if n_blocks < 2 or block_size < 1:
            raise ValueError(f"a paged cache needs >= 2 blocks of >= 1 token (got {n_blocks} x {block_size})")
        self.n_blocks = n_blocks
        self.block_size = block_size
        self._free = list(range(n_blocks - 1, SCRATCH_BLOCK, -1))  # pop() hands out 1, 2, 3, ...

    @property
    def usable_blocks(self) -> int:
        return self.n_blocks - 1

    @property
    def n_free(self) -> int:
        return len(self._free)

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def can_allocate(self, n: int) -> bool:
        return n <= len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise RuntimeError(f"asked for {n} KV blocks, {len(self._free)} free")
        out = self._free[len(self._free) - n:][::-1]
        del self._free[len(self._free) - n:]
        return out

    def grow(self, blocks: list[int], n_tokens: int) -> bool:
        """Extend `blocks` in place to hold `n_tokens`; False (nothing taken) when too few blocks are free."""
        need = self.blocks_for(n_tokens) - len(blocks)
        if need <= 0:
            return True
        if need > len(self._free):
            return False
        blocks.extend(self.allocate(need))
        return True

    def free(self, blocks: list[int]) -> None:
        self._free.extend(reversed(blocks))
        blocks.clear()
