"""The data channel: large values between a client and an engine, beside the command path.

Foolscap carries commands; a value of at least `THRESHOLD` bytes travels
beside them, and the command carries a small *blob reference* instead
(frames ``[BLOB_MAGIC, id, sizes]``), so the per-engine queue keeps its
order. The client asks the controller (over its session) for a ticket to or
from engine E: a pairing id and a secret, and where to go. Three paths, the
first that applies:

1. Same host, same user: E's abstract Unix socket (below).
2. Another host: E's *data port* (``info["direct_data"]``, with the address
   the controller reaches E at). The client opens TLS to E (E serves its own
   Foolscap certificate), checks that the certificate's digest is E's tubid
   (which Foolscap authenticated when E registered), and sends the transfer's
   header with the secret inside TLS; E refuses the transfer unless the
   secret matches a book the controller announced. A ticket is good for
   `BOOK_USES` transfers. Then, by the controller's ``--data-encryption``:
   ``sealed`` (the default) AES-GCM frames straight on the socket under a
   key made inside TLS (see `seal`), ``tls`` TLS records, or ``off``
   unencrypted (an HMAC proves the secret; see `stream`).
3. When the data port cannot be reached: through the controller's `Relay`,
   which E dials too and which splices the two sockets byte for byte, never
   decrypting; the same TLS and tubid check run inside the splice.

Same host, same user: the local path
-------------------------------------
When the client runs on the engine's host as the engine's user (same boot id,
hostname, uid and namespaces: see `host_key`; the engine advertises its key at
registration in ``info["local_data"]``), the controller hands out a *local* ticket instead:
a pairing id and secret good for `BOOK_USES` transfers with that engine
within `BOOK_TTL` (a client asks once per engine, not once per value), plus
the engine's abstract Unix socket name, pid and uid. The client connects to
that socket and checks with ``SO_PEERCRED`` that the process serving it is
that engine (pid and uid); the engine accepts only peers of its own uid,
then the pairing id and secret (each try spends a use), then the transfer's
direction, blob id and frame sizes. The bytes go with ``sendall`` /
``recv_into`` (two kernel copies, no TLS, no relay) from the sender's own
memory into buffers mapped with transparent huge pages (see `buffer_for`);
a pulled value is lent from the engine's memory (see `BlobStore`). If the
socket is not reachable from the client (another network namespace, say),
the client asks again for a relayed TLS transfer, and remembers that engine.
``IPYTHON1_LOCAL_DATA=0`` in the client's or the engine's environment turns
the local path off.

The socket is in the abstract namespace, so it vanishes with the engine
however the engine ends (SIGKILL, ``os._exit``): no file is left behind, and
no path length limit applies. Anyone on the host may connect to it, so the
uid check comes first, before a byte is read.

Receive buffers are reused
--------------------------
A large frame is received into a mapping of its own (`buffer_for`), which
the rebuilt value keeps. Touching fresh memory is most of a same-host
transfer's cost, and on a VM whose host reclaims freed guest memory (free
page reporting) one first touch of 256 MiB can take ~0.5 s instead of
~0.02 s. So each process (engine or client) keeps a `BufferPool`: it
remembers the mappings it made and reuses one for a later frame of the same
size, or a little smaller (the mapping is cut to size), once nothing else
refers to it (a value built on it, a NumPy view of that value, a
memoryview: anything holding the memory holds the mapping). What it keeps
unused is bounded: ``IPYTHON1_BUFFER_POOL_MB`` (default 1024, ``0`` turns
the pool off) caps the unused mappings' total size per process, and one
unused for `POOL_IDLE` seconds (30) is unmapped.

Every blocking call here runs on a worker thread, never on a reactor thread.

Modules, by role: `refs` (a value's stand-in on the command path, errors),
`stream` (one TCP transfer's TLS and framing), `seal` (its sealed frames), `local` (the same-host
path's wire), `buffers` (receive buffers); `ipython1.controller.relay`,
`ipython1.engine.blobs`, `ipython1.engine.dataserver`,
`ipython1.engine.localdata` and `ipython1.client.transfer` hold each
process's end.
"""
