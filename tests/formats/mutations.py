"""Byte-level damage for hypothesis: no torch needed, so the Python 3.10 job fuzzes with it too."""

from __future__ import annotations

from hypothesis import strategies as st

# Flip bits, cut the tail, or overwrite a run. Positions are taken modulo the length, so one
# strategy serves files of any size.
mutation = st.one_of(
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 10**7), st.integers(1, 255)), min_size=1, max_size=8)),
    st.tuples(st.just("cut"), st.integers(0, 10**7)),
    st.tuples(st.just("splice"), st.tuples(st.integers(0, 10**7), st.binary(min_size=1, max_size=16))),
)


def mutate(data: bytes, how) -> bytes:
    """``data`` damaged as ``how`` (drawn from ``mutation``) says."""
    kind, arg = how
    if kind == "flip":
        out = bytearray(data)
        for pos, mask in arg:
            out[pos % len(out)] ^= mask
        return bytes(out)
    if kind == "cut":
        return data[: arg % len(data)]
    pos, chunk = arg
    pos %= len(data)
    return data[:pos] + chunk + data[pos + len(chunk):]
