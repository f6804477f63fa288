"""The data channel's pure parts: how a large direct transfer is cut into stripes, the HMAC."""

from __future__ import annotations

from ipython1.transport.data.stream import STRIPE_MIN, plain_proof, stripe_count, stripe_pieces


def test_stripes_cut_the_frames_bytes_into_equal_slices():
    sizes = [10, 0, 7, 3]
    for count in (1, 2, 3, 7, 20):
        pieces = [p for i in range(count) for p in stripe_pieces(sizes, i, count)]
        covered = [(f, b) for f, s, e in pieces for b in range(s, e)]
        assert covered == [(f, b) for f, size in enumerate(sizes) for b in range(size)]
        lengths = [sum(e - s for _, s, e in stripe_pieces(sizes, i, count)) for i in range(count)]
        assert max(lengths) - min(lengths) <= 1
    assert stripe_count([STRIPE_MIN - 1], 4) == 1 and stripe_count([STRIPE_MIN], 4) == 4
    assert stripe_count([STRIPE_MIN], 99) == 8 and stripe_count([STRIPE_MIN], 0) == 1


def test_the_unencrypted_proof_binds_secret_nonce_and_header():
    proof = plain_proof(b"s" * 32, b"n" * 32, b"head")
    assert len(proof) == 32
    assert proof != plain_proof(b"t" * 32, b"n" * 32, b"head")
    assert proof != plain_proof(b"s" * 32, b"m" * 32, b"head")
    assert proof != plain_proof(b"s" * 32, b"n" * 32, b"hea2")
