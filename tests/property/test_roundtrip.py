"""Round trips over shapes, dtypes, sparsity and bit widths."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import nncodec
from nncodec.bitstream.descriptor import bfloat16_bits_to_float32

INT_DTYPES = ["int8", "int16", "int32", "int64", "uint8"]
FLOAT_DTYPES = ["float16", "float32", "float64"]

shapes = st.lists(st.integers(0, 9), min_size=0, max_size=4).map(tuple)


@st.composite
def arrays(draw, dtypes=INT_DTYPES + FLOAT_DTYPES + ["bool", "bfloat16"]):
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(shapes)
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    if dtype == "bool":
        a = rng.random(n) < 0.5
    elif dtype == "bfloat16":
        a = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)  # any bit pattern, NaNs included
    elif dtype in FLOAT_DTYPES:
        a = rng.standard_normal(n).astype(dtype) * np.asarray(10.0 ** rng.integers(-3, 3), dtype=dtype)
    else:
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
    mask = rng.random(n) < density
    a = np.where(mask, a, np.zeros((), a.dtype)).reshape(shape)
    return dtype, a


def _encode_raw(tensors: dict, **opts) -> bytes:
    from nncodec.encoder import Encoder
    from nncodec.dtypes import dtype_by_name

    return Encoder(**opts).encode({k: (v, dtype_by_name(d)) for k, (d, v) in tensors.items()})[0]


@given(st.dictionaries(st.text(min_size=1, max_size=12), arrays(), max_size=5))
def test_lossless_is_bit_exact(tensors):
    data = _encode_raw(tensors)
    out = nncodec.decode_arrays(data)
    assert set(out) == set(tensors)
    for name, (dtype, a) in tensors.items():
        got = out[name]
        assert got.shape == a.shape
        assert got.tobytes() == a.tobytes()
        assert got.dtype == (np.dtype(np.uint16) if dtype == "bfloat16" else np.dtype(dtype))


@given(arrays(dtypes=FLOAT_DTYPES + ["bfloat16"]), st.integers(1, 16))
def test_quantized_within_bound(dt_a, bits):
    dtype, a = dt_a
    if dtype == "bfloat16":
        a = (a & np.uint16(0xBFFF))  # keep exponents below the NaN/Inf range
    data = _encode_raw({"t": (dtype, a)}, bits=bits)
    got = nncodec.decode_arrays(data)["t"]
    assert got.shape == a.shape and got.dtype == a.dtype
    ref = bfloat16_bits_to_float32(a).astype(np.float64) if dtype == "bfloat16" else a.astype(np.float64)
    dec = bfloat16_bits_to_float32(got).astype(np.float64) if dtype == "bfloat16" else got.astype(np.float64)
    if a.ndim == 0 or a.size == 0:
        assert got.tobytes() == a.tobytes()  # scalars and empty tensors stay lossless
        return
    eff_bits = 16 if a.ndim == 1 else bits
    flat_ref = ref.reshape(ref.shape[0], -1) if a.ndim >= 2 else ref.reshape(1, -1)
    flat_dec = dec.reshape(flat_ref.shape)
    out_eps = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 2.0**-24}[dtype]
    # rounding to the output dtype: relative, and at least half the subnormal spacing
    out_abs = {"float16": 2.0**-25, "bfloat16": 2.0**-134, "float32": 2.0**-150, "float64": 2.0**-150}[dtype]
    for row_ref, row_dec in zip(flat_ref, flat_dec):
        amax = np.abs(row_ref).max(initial=0.0)
        err = np.abs(row_dec - row_ref)
        if eff_bits == 1:
            bound = 2 * amax
        else:
            bound = amax / ((1 << (eff_bits - 1)) - 1) / 2
        assert (err <= bound * (1 + 1e-5) + np.abs(row_ref) * out_eps * 2 + out_abs + 1e-30).all()


@given(st.floats(2.0**-12, 1.0), arrays(dtypes=["float32"]))
def test_step_quantization_bound(step, dt_a):
    _, a = dt_a
    data = _encode_raw({"t": ("float32", a)}, step=step)
    got = nncodec.decode_arrays(data)["t"]
    if a.ndim == 0 or a.size == 0:
        assert got.tobytes() == a.tobytes()
        return
    s = np.float32(step / 256 if a.ndim == 1 else step)
    assert (np.abs(got.astype(np.float64) - a) <= s / 2 * (1 + 1e-5) + np.abs(a) * 2.0**-23).all()
