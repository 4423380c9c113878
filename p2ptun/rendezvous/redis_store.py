"""The registration store of a rendezvous cluster: name ↔ key bindings kept in the shared Redis.

The hub asks its store synchronously (:class:`~p2ptun.signal.hub.Registrations`), between two
bytes of one node's input, so this store answers from a copy of the bindings in memory, the
same rules as :class:`~p2ptun.rendezvous.store.SqliteStore` (:class:`BindingRules`). The
cluster shell (:mod:`p2ptun.rendezvous.cluster`) keeps the copy and Redis in step:

- it loads every binding when it connects (and again after Redis lost its data, writing back
  the ones it knows, so a restarted Redis is repopulated without an operator);
- a binding made here is written through (:meth:`RedisStore.take_new`): an atomic script sets
  ``name → key`` and ``key → name`` only if neither exists, and announces it to the other
  instances, whose copies :meth:`RedisStore.learn` it;
- when two instances bound the same new name in the same instant, Redis' answer wins and the
  copy here is corrected (the node that lost keeps its connection until it reconnects, when
  it is refused as "name taken").

Redis keys: ``p2ptun:bindings`` (hash name → key), ``p2ptun:binding-keys`` (hash key → name).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from p2ptun.config import NodeEntry
from p2ptun.rendezvous.store import BindingRules, OpenRegistrationLimits

BINDINGS = b"p2ptun:bindings"
BINDING_KEYS = b"p2ptun:binding-keys"

#: KEYS: bindings, binding-keys; ARGV: name, key. 1 if bound now or already so, else 0.
BIND_SCRIPT = b"""
local bound = redis.call('HGET', KEYS[1], ARGV[1])
if bound then return bound == ARGV[2] and 1 or 0 end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return 1
"""


class RedisStore(BindingRules):
    """Bindings as a copy in memory of the cluster's Redis hash (module docstring)."""

    def __init__(
        self,
        open_registration: bool,
        nodes: Iterable[NodeEntry] = (),
        limits: OpenRegistrationLimits | None = None,
    ) -> None:
        super().__init__(open_registration, nodes, limits)
        self.by_name: dict[str, bytes] = {}
        self.by_key: dict[bytes, str] = {}
        self._new: list[tuple[str, bytes]] = []
        #: Called when a binding is made here (the shell writes it through).
        self.on_new: Callable[[], None] = lambda: None
        #: Bindings corrected because another instance's won.
        self.conflicts = 0

    def _count(self) -> int:
        return len(self.by_name)

    def _name_key(self, name: str) -> bytes | None:
        return self.by_name.get(name)

    def _key_name(self, key: bytes) -> str | None:
        return self.by_key.get(key)

    def _bind(self, name: str, key: bytes) -> bool:
        self.by_name[name] = key
        self.by_key[key] = name
        self._new.append((name, key))
        self.on_new()
        return True

    def take_new(self) -> list[tuple[str, bytes]]:
        """Bindings made here since the last call, to write through."""
        new, self._new = self._new, []
        return new

    def learn(self, name: str, key: bytes) -> None:
        """Redis holds ``name → key`` (loaded, announced, or the winner of a race)."""
        old_key = self.by_name.get(name)
        if old_key == key:
            return
        if old_key is not None:
            self.conflicts += 1
            self.by_key.pop(old_key, None)
        old_name = self.by_key.get(key)
        if old_name is not None and old_name != name:
            self.conflicts += 1
            self.by_name.pop(old_name, None)
        self.by_name[name] = key
        self.by_key[key] = name

    def close(self) -> None:
        pass
