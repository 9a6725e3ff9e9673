"""An approximate prefix tree: which endpoints were recently sent which prompt prefixes.

A prompt is cut into fixed-size chunks and each chunk is named by a chain hash (the hash of
the previous chunk's name and this chunk's content), so a name stands for the whole prefix
up to its chunk and the tree is flattened into one dict: name -> bitmask of the endpoints
holding it. Each endpoint keeps its names in an LRU of bounded size; a prompt's names are
touched last-chunk first, so a prefix is always at least as recent as its extensions and
eviction removes the tips of branches before their stems.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence


def chain_hashes(text: str, chunk: int) -> list[int]:
    """The chain hash of every full `chunk`-character prefix of `text` (a partial tail is left
    out: a conversation's next turn extends it, so it would never match again)."""
    out: list[int] = []
    h = 0
    for start in range(0, len(text) - chunk + 1, chunk):
        h = hash((h, text[start : start + chunk]))
        out.append(h)
    return out


class ChunkTree:
    """Per-endpoint LRU sets of chain hashes, at most `max_blocks` per endpoint unless
    `set_limit` gave that endpoint its own bound."""

    def __init__(self, max_blocks: int) -> None:
        self.max_blocks = max_blocks
        self._limits: dict[int, int] = {}  # bit -> its endpoint's own bound
        self.owners: dict[Hashable, int] = {}  # chain hash -> bitmask of endpoints
        self._bits: dict[Hashable, int] = {}  # endpoint key -> its bit
        self._lrus: dict[int, OrderedDict[Hashable, None]] = {}  # bit -> hashes, oldest first

    def bit(self, key: Hashable) -> int:
        found = self._bits.get(key)
        if found is None:
            used = 0
            for b in self._bits.values():
                used |= b
            found = (used + 1) & ~used  # the lowest free bit
            self._bits[key] = found
            self._lrus[found] = OrderedDict()
        return found

    def set_limit(self, key: Hashable, max_blocks: int) -> None:
        """Bound `key`'s names to `max_blocks` from its next insert on (its cache's real size)."""
        self._limits[self.bit(key)] = max_blocks

    def limit(self, key: Hashable) -> int:
        b = self._bits.get(key)
        return self._limits.get(b, self.max_blocks) if b is not None else self.max_blocks

    def blocks(self, key: Hashable) -> int:
        """How many chunk names the endpoint holds."""
        b = self._bits.get(key)
        return len(self._lrus[b]) if b is not None else 0

    def insert(self, key: Hashable, hashes: Sequence[Hashable]) -> None:
        """`key` was sent a prompt with these chain hashes."""
        bit = self._bits.get(key) or self.bit(key)
        lru, owners = self._lrus[bit], self.owners
        touch, held_by = lru.move_to_end, owners.get  # (the hot loop: one lookup per name)
        for h in reversed(hashes):
            if h in lru:
                touch(h)
            else:
                lru[h] = None
                owners[h] = held_by(h, 0) | bit
        excess = len(lru) - self._limits.get(bit, self.max_blocks)
        if excess > 0:
            oldest, keep = lru.popitem, ~bit
            for _ in range(excess):
                old = oldest(False)[0]
                left = owners[old] & keep
                if left:
                    owners[old] = left
                else:
                    del owners[old]

    def remove(self, key: Hashable, hashes: Iterable[Hashable]) -> None:
        """`key` no longer holds these names (known evictions)."""
        bit = self._bits.get(key)
        if bit is None:
            return
        lru = self._lrus[bit]
        for h in hashes:
            if lru.pop(h, 0) is None:
                self._drop(h, bit)

    def forget(self, key: Hashable) -> None:
        """Drop everything `key` held, and free its bit."""
        bit = self._bits.pop(key, None)
        if bit is not None:
            self._limits.pop(bit, None)
            for h in self._lrus.pop(bit):
                self._drop(h, bit)

    def _drop(self, h: Hashable, bit: int) -> None:
        left = self.owners.get(h, 0) & ~bit
        if left:
            self.owners[h] = left
        else:
            self.owners.pop(h, None)

    def match(self, hashes: Sequence[Hashable], keys: Sequence[Hashable]) -> list[int]:
        """For each of `keys`, how many leading chunks of `hashes` it holds."""
        bits = [self._bits.get(k, 0) for k in keys]
        alive = 0
        for b in bits:
            alive |= b
        depth_of: dict[int, int] = {}
        owners = self.owners
        depth = 0
        for h in hashes:
            if not alive:
                break
            held = owners.get(h, 0) & alive
            if held != alive:
                gone = alive & ~held
                for b in bits:
                    if b & gone:
                        depth_of[b] = depth
                alive = held
            depth += 1
        return [depth_of.get(b, depth) if b else 0 for b in bits]
