"""The disk buffers: bounded, durable FIFOs of small text records in one SQLite file.

Every sink has a :class:`DiskBuffer` (:mod:`gateway.buffer.queue`); all of them
live as tables in one :class:`BufferStore` (:mod:`gateway.buffer.store`,
``<buffer_dir>/buffer.db``), so that a packet's records for *both* sinks, and
the acknowledgements that arrived since the last packet, go to disk in one
transaction. :class:`StoreReader` (:mod:`gateway.buffer.reader`) reads a store
without ever writing it, for ``gateway buffer stats|export``;
:func:`import_records` appends to a store no gateway has open (``gateway buffer
import|resend-dead``).
"""

from gateway.buffer.importer import BufferFull, StoreInUse, import_records
from gateway.buffer.queue import DiskBuffer, Record
from gateway.buffer.reader import StoreError, StoreReader, read_store
from gateway.buffer.sqlite import FORMAT_VERSION, STORE_FILE
from gateway.buffer.store import BufferStore

__all__ = [
    "FORMAT_VERSION",
    "STORE_FILE",
    "BufferFull",
    "BufferStore",
    "DiskBuffer",
    "Record",
    "StoreError",
    "StoreInUse",
    "StoreReader",
    "import_records",
    "read_store",
]
