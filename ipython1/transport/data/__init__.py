"""The data channel: large values between a client and an engine, beside the command path.

Foolscap carries commands; a value larger than `THRESHOLD` travels instead
over a TLS connection *between the client and the engine*, relayed byte for
byte by the controller, which never decrypts (and never unpickles) it:

1. The client asks the controller (over its Foolscap session) for a transfer
   to or from engine E. The controller registers a pairing id with its
   `Relay`, tells E to connect to the relay, and answers the client with the
   pairing id, a secret, the relay address, and E's tubid (which Foolscap
   authenticated when E registered).
2. Client and engine each connect to the relay and send the pairing id; the
   relay splices the two sockets.
3. Through the splice, the client opens TLS to the engine (the engine serves
   its own Foolscap certificate) and checks that the certificate's digest is
   E's tubid; it then sends the secret inside TLS, and the engine refuses the
   transfer unless it matches. Only the holder of the session gets in, and
   only the real engine is talked to.
4. Frames go out with ``sendall`` of each frame and come in with
   ``recv_into`` preallocated buffers; the engine keeps uploaded frames in
   its `BlobStore` under a blob id, and the Foolscap command refers to them
   with a small *blob reference* (frames ``[BLOB_MAGIC, id, sizes]``), so
   the per-engine queue keeps its order.

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
`stream` (one TCP transfer's TLS and framing), `local` (the same-host
path's wire), `buffers` (receive buffers); `ipython1.controller.relay`,
`ipython1.engine.blobs`, `ipython1.engine.dataserver`,
`ipython1.engine.localdata` and `ipython1.client.transfer` hold each
process's end.
"""
