"""Bytes of small pruned, quantized CNN streams against the order-0 entropy of their codes (not CI).

For each stream (the ``.nnc`` files given, else two models built here: MobileNetV2Small and ResNet-8 with
4-bit kernels, some on the po2 grid, magnitude pruning and 6-bit folded batch norms, no search) it prints,
per kind of tensor (kernels: quantized, rank >= 2; vectors: other quantized tensors, e.g. folded batch norms
and biases; lossless: tensors stored as they are), the tensors, elements, bytes of their code words as the
encoder receives them, and two order-0 entropy bounds: the sum over tensors of each tensor's order-0 entropy
of its codes (lossless tensors: of their words; a tensor with one value costs 0), and that of the kind's codes
pooled. Then the stream's bytes as three encoders write it, all bit-exact (checked): "1.4" as encoded before
tensor groups were split and narrowed (one group of tensors up to 4096 elements, codes in the word type they
came in: the encoder of format 1.4 / 1.5 before groups were split), "before" without the adaptive arithmetic
coding stage 8 (the encoder of format 1.5 with split groups), "after" the current encoder (stage 8 a
candidate for group data, format 1.6), with the units of each; and the encode and decode times (median of
``--repeat`` runs, one thread) of "before" and "after". ``--stage-speed`` adds stage 8's decode speed on a
1 MiB int8 array (pruned-like Laplacian codes) with the compiled and the portable kernels.

usage: python -m tests.benchmarks.bench_small_streams [FILE.nnc ...] [--name NAME ...] [--prune 0.75] [--seed 0]
       [--repeat 5] [--stage-speed]
Reads nothing from the network; the built models use random weights and random batch-norm statistics.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import nncodec.encoder as encoder_module
from nncodec.bitstream.constants import SCHEME_NONE
from nncodec.bitstream.descriptor import CodedTensor
from nncodec.decoder import StreamWalker, decode_arrays, decode_unit_codes, read_info
from nncodec.encoder import Encoder
from nncodec.limits import DEFAULT_LIMITS
from nncodec.quant.rate_aware import order0_bits

KINDS = ("kernels", "vectors", "lossless")


def stored_codes(data: bytes) -> tuple[dict[str, Any], dict | None]:
    """A stream's tensors as the encoder takes them back (quantized ones as :class:`CodedTensor`: codes and
    descriptor; lossless ones as ``(storage array, dtype)``), so that re-encoding keeps the plan and the
    codes, and its topology (None: none)."""
    walker = StreamWalker(io.BytesIO(data), DEFAULT_LIMITS)
    out: dict[str, Any] = {}
    for index, uh, th, coded in walker.tensor_units():
        codes = decode_unit_codes(walker, index, uh, th, coded)  # shaped like the tensor
        if th.quant.scheme == SCHEME_NONE:
            out[th.name] = (codes.view(th.dtype.storage), th.dtype)
        else:
            out[th.name] = CodedTensor(codes, th.quant, th.dtype)
    return out, walker.topology


def kind_of(value: Any) -> str:
    if isinstance(value, CodedTensor):
        return "kernels" if value.codes.ndim >= 2 else "vectors"
    return "lossless"


def symbols_of(value: Any) -> np.ndarray:
    """The codes of a quantized tensor (as int64), or the words of a lossless one (as unsigned integers)."""
    if isinstance(value, CodedTensor):
        return value.codes.reshape(-1).astype(np.int64)
    flat = np.ascontiguousarray(value[0]).reshape(-1)
    return flat.view(f"<u{flat.dtype.itemsize}") if flat.dtype.itemsize in (1, 2, 4, 8) else flat.view(np.uint8)


def kind_table(tensors: dict[str, Any]) -> tuple[str, float]:
    rows = [f"  {'kind':9s} {'tensors':>7s} {'elements':>9s} {'code B':>8s} {'H0/tensor B':>12s} {'H0 pooled B':>12s}"]
    bound = 0.0
    for kind in KINDS:
        values = [v for v in tensors.values() if kind_of(v) == kind]
        if not values:
            continue
        per_tensor = sum(order0_bits(symbols_of(v)) / 8 for v in values)
        pooled = order0_bits(np.concatenate([symbols_of(v) for v in values])) / 8
        numel = sum(math.prod(np.shape(v.codes if isinstance(v, CodedTensor) else v[0])) for v in values)
        words = sum((v.codes if isinstance(v, CodedTensor) else v[0]).nbytes for v in values)
        rows.append(f"  {kind:9s} {len(values):7d} {numel:9d} {words:8d} {per_tensor:12.0f} {pooled:12.0f}")
        bound += per_tensor
    return "\n".join(rows), bound


@contextlib.contextmanager
def encoder_without_acode() -> Iterator[None]:
    """The encoder's choices before the adaptive arithmetic coding stage (id 8, format 1.6): group data blocks
    and tensor units coded by the other stages only (the same bytes as that encoder, format 1.5 at most)."""
    saved = encoder_module._acode_smallest, encoder_module._acode_unit
    encoder_module._acode_smallest = lambda *args: None
    encoder_module._acode_unit = lambda *args: None
    try:
        yield
    finally:
        encoder_module._acode_smallest, encoder_module._acode_unit = saved


@contextlib.contextmanager
def encoder_before() -> Iterator[None]:
    """The encoder's choices before tensor groups were split and their codes narrowed: one group of the
    tensors up to 4096 elements, or none, and no stage 8 (patched module constants; the same bytes as that
    encoder). Without splits the larger bounds have no candidate (only the single group of bounds up to 4096
    competes): leaving them out saves their work, not bytes."""
    saved = encoder_module._SPLITS, encoder_module._GROUP_BOUNDS
    encoder_module._SPLITS, encoder_module._GROUP_BOUNDS = (), (16, 256, 4096)
    try:
        with encoder_without_acode():
            yield
    finally:
        encoder_module._SPLITS, encoder_module._GROUP_BOUNDS = saved


def units_of(data: bytes) -> str:
    parts = []
    for u in read_info(data).units:
        if u.type in ("tensor_group", "tensor"):
            parts.append(f"{u.type}({len(u.members)})={u.size}" if u.members else f"{u.type}={u.size}")
    return ", ".join(parts)


def same_values(a: bytes, b: bytes) -> bool:
    x, y = decode_arrays(a), decode_arrays(b)
    return sorted(x) == sorted(y) and all(x[k].dtype == y[k].dtype and x[k].shape == y[k].shape
                                          and x[k].reshape(-1).view(np.uint8).tobytes()
                                          == y[k].reshape(-1).view(np.uint8).tobytes() for k in x)


def _median_seconds(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def report(name: str, tensors: dict[str, Any], float32_bytes: int | None = None, stored: int | None = None,
           repeat: int = 5) -> None:
    with encoder_before():
        first, _ = Encoder().encode(tensors)
    with encoder_without_acode():
        before, _ = Encoder().encode(tensors)
        enc_before = _median_seconds(lambda: Encoder().encode(tensors), repeat)
    after, _ = Encoder().encode(tensors)
    enc_after = _median_seconds(lambda: Encoder().encode(tensors), repeat)
    dec_before = _median_seconds(lambda: decode_arrays(before), repeat)
    dec_after = _median_seconds(lambda: decode_arrays(after), repeat)
    table, bound = kind_table(tensors)
    exact = same_values(first, after) and same_values(before, after)
    print(f"{name}: {len(tensors)} tensors")
    print(table)
    ratio = f", {float32_bytes / len(after):.1f}x smaller than float32" if float32_bytes else ""
    as_file = f" (the file: {stored} B)" if stored is not None else ""
    print(f"  1.4    {len(first)} B{as_file} [{units_of(first)}]")
    print(f"  before {len(before)} B [{units_of(before)}]  (no stage 8)")
    print(f"  after  {len(after)} B [{units_of(after)}]  ({100 * (len(after) / len(before) - 1):+.1f} % vs before, "
          f"{100 * (len(after) / len(first) - 1):+.1f} % vs 1.4, bit-exact: {exact}{ratio}, "
          f"format 1.{int.from_bytes(after[10:12], 'little')})")
    print(f"  order-0 bound of the codes (sum per tensor) {bound:.0f} B: after = {len(after) / bound:.2f}x bound")
    print(f"  encode {1e3 * enc_before:.1f} -> {1e3 * enc_after:.1f} ms, decode {1e3 * dec_before:.2f} -> "
          f"{1e3 * dec_after:.2f} ms (before -> after, median of {repeat})")


def stage_speed(repeat: int = 3) -> None:
    """Stage 8's decode speed on 1 MiB of int8 codes (Laplacian, scale 2, half of them zero), one segment,
    shift 4, K 8: compiled and portable kernels."""
    from nncodec.coding import kernels
    from nncodec.coding.acode_stage import Acode, Segment, acode_compiled

    rng = np.random.default_rng(0)
    n = 1 << 20
    words = np.clip(np.round(rng.laplace(0, 2, n)) * (rng.random(n) < 0.5), -128, 127).astype(np.int8)
    stage = Acode(4, 8, [Segment(0, 0, 0, n)])
    coded = stage.encode(memoryview(words.view(np.uint8)))
    out = np.empty(n, np.uint8)
    decoder = Acode(4, 8)
    print(f"stage 8 on 1 MiB of int8 codes (Laplacian scale 2, 50 % zeros): {len(coded)} B coded "
          f"({8 * len(coded) / n:.2f} bits/word)")
    for label, env in (("compiled", None), ("portable", "portable")):
        saved = os.environ.get("NNCODEC_KERNELS")
        if env:
            os.environ["NNCODEC_KERNELS"] = env
        kernels.native_kernels.cache_clear()
        try:
            if label == "compiled" and not acode_compiled():
                print("  compiled: not built")
                continue
            seconds = _median_seconds(lambda: decoder.decode_into(memoryview(coded), out), repeat)
            assert out.tobytes() == words.tobytes()
            print(f"  {label}: decode {n / seconds / 1e6:.2f} MB/s (median of {repeat})")
        finally:
            if saved is None:
                os.environ.pop("NNCODEC_KERNELS", None)
            else:
                os.environ["NNCODEC_KERNELS"] = saved
            kernels.native_kernels.cache_clear()


def built_models(prune: float, seed: int) -> Iterator[tuple[str, dict[str, Any], int]]:
    """MobileNetV2Small and ResNet-8 (width 16, 1 channel in, 10 classes), random weights with batch-norm
    statistics from random batches: 4-bit kernels (depthwise, shortcut and fc kernels on the po2 grid, the rest
    uniform), 6-bit folded batch norms, 8-bit fc bias, each conv / fc pruned by magnitude (``prune`` for the
    MobileNet, ``(1 + prune) / 2`` for the ResNet)."""
    import torch

    from nncodec.models import MobileNetV2Small, ResNet8
    from nncodec.prune.unstructured import apply_masks, magnitude_masks
    from nncodec.quant.layers import quantize_model
    from nncodec.torch_io import tensors_from

    norm = {"kernel": "quantized_bits(6,0,1,alpha='auto')", "bias": "quantized_bits(6,0,1,alpha='auto')"}
    po2 = {"kernel": "quantized_po2_zero(4,1)"}
    for name, build, amount, layers in (
            ("MobileNetV2Small (built)", MobileNetV2Small, prune,
             {"*.depthwise.0": po2, "fc": {**po2, "bias": "quantized_bits(8,-2,1)"}, "*.1": norm}),
            ("ResNet-8 (built)", ResNet8, (1 + prune) / 2,
             {"*shortcut.0": po2, "*conv2": po2, "fc": {"kernel": "quantized_bits(4,0,1)",
                                                       "bias": "quantized_bits(8,-2,1)"},
              "*bn*": norm, "stem.1": norm, "*shortcut.1": norm})):
        torch.manual_seed(seed)
        model = build(1, 10, 16).train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(8, 1, 28, 28) * 2 + 1)
        float32_bytes = 4 * sum(p.numel() for p in model.parameters())
        plan = {"layers": layers, "default": {"kernel": "quantized_bits(4,-1,1)"}}
        q = quantize_model(model.eval(), plan).eval()
        apply_masks(q, magnitude_masks(q, amount))
        yield name, tensors_from(q), float32_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", type=Path, help=".nnc streams (default: build two models)")
    ap.add_argument("--name", action="append", default=[],
                    help="what to call each FILE in the output, in their order (default: its path)")
    ap.add_argument("--prune", type=float, default=0.75, help="pruned fraction of the built MobileNet")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=5, help="runs per timing (median)")
    ap.add_argument("--stage-speed", action="store_true", help="also time stage 8's decoding of 1 MiB")
    args = ap.parse_args()
    if args.name and len(args.name) != len(args.files):
        ap.error(f"--name given {len(args.name)} times for {len(args.files)} files: give one per file")
    if args.files:
        for path, name in zip(args.files, args.name or [str(p) for p in args.files]):
            data = path.read_bytes()
            report(name, stored_codes(data)[0], stored=len(data), repeat=args.repeat)
    else:
        for name, tensors, float32_bytes in built_models(args.prune, args.seed):
            report(name, tensors, float32_bytes, repeat=args.repeat)
    if args.stage_speed:
        stage_speed()


if __name__ == "__main__":
    main()
