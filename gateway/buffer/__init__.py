"""The disk buffers: bounded, durable FIFOs of small text records in one ``diskcache.Cache``.

Every sink has a :class:`DiskBuffer` (:mod:`gateway.buffer.queue`, its positions
in a :class:`~gateway.buffer.ledger.Ledger`); all of them
live as queues in one :class:`BufferStore` (:mod:`gateway.buffer.store`,
``<buffer_dir>/cache.db``), so that a packet's records for *both* sinks, and
the acknowledgements that arrived since the last packet, go to disk in one
transaction. :class:`StoreReader` (:mod:`gateway.buffer.reader`) reads a store
without ever writing it, for ``gateway buffer stats|export``;
:func:`import_records` appends to a store no gateway has open (``gateway buffer
import|resend-dead``). :func:`lock_dir` (:mod:`gateway.buffer.dirlock`) keeps a
second gateway off a buffer directory one already runs on.
"""

from gateway.buffer.cachefile import FORMAT_VERSION, STORE_ERRORS, STORE_FILE
from gateway.buffer.dirlock import LOCK_FILE, DirLock, holder, lock_dir
from gateway.buffer.importer import AlreadyImported, BufferFull, StoreInUse, import_records
from gateway.buffer.queue import CommitResult, DiskBuffer, Record
from gateway.buffer.reader import StoreError, StoreReader, read_store
from gateway.buffer.store import BufferStore, open_buffer

__all__ = [
    "FORMAT_VERSION",
    "LOCK_FILE",
    "STORE_ERRORS",
    "STORE_FILE",
    "AlreadyImported",
    "BufferFull",
    "BufferStore",
    "CommitResult",
    "DirLock",
    "DiskBuffer",
    "Record",
    "StoreError",
    "StoreInUse",
    "StoreReader",
    "holder",
    "import_records",
    "lock_dir",
    "open_buffer",
    "read_store",
]
