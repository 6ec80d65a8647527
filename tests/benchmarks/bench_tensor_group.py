"""Where the bytes of a small model's stream go, with and without the tensor-group unit (FORMAT.md §14).

    python tests/benchmarks/bench_tensor_group.py [--stream model.nnc ...] [--repeat 7] [--out results/tensor_group.json]

Models: ResNet-8 and the MobileNetV2-style net (width 16, 1 input channel, 10 classes) with running statistics
from a few batches of noise, 3-bit convolutions and batch norms folded into 8-bit scale and shift codes (the
search's folded `QBatchNorm2d`), a 4-bit classifier. ``--stream`` adds existing streams (a demo's
``model.nnc``, say): their stored codes are re-encoded with and without groups, so the plan and the codes
are the same on both sides. Figures: bytes per part of the stream (file header, unit headers, tensor-unit
headers split into name / dtype and shape / descriptor / pipeline, tensor payloads, tensor-group unit), the
ratio to float32, and the wall time of encoding and of decoding (``decode_arrays``) each stream, best of
``--repeat`` runs, with the grouped stream's time as a ratio to the ungrouped one's (the anchor) in the same
run. Rows of the ``--out`` file for models not run this time are kept.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from nncodec.bitstream.byte_reader import ByteReader  # noqa: E402
from nncodec.bitstream.constants import UNIT_NAMES, UNIT_TENSOR, UNIT_TENSOR_GROUP  # noqa: E402
from nncodec.bitstream.descriptor import CodedTensor  # noqa: E402
from nncodec.bitstream.group import GroupUnit  # noqa: E402
from nncodec.bitstream.reader import UnitReader  # noqa: E402
from nncodec.bitstream.units import TensorHeader  # noqa: E402
from nncodec.decoder import decode_arrays  # noqa: E402
from nncodec.encoder import Encoder  # noqa: E402
from nncodec.limits import DEFAULT_LIMITS  # noqa: E402
from nncodec.models import MobileNetV2Small, ResNet8  # noqa: E402
from nncodec.quant.layers import quantize_model  # noqa: E402
from nncodec.torch_io import tensors_from  # noqa: E402
from tests.benchmarks.bench_small_streams import stored_codes  # noqa: E402

_BN = {"kernel": "quantized_bits(8,2,1)", "bias": "quantized_bits(8,2,1)"}
PLAN = {"layers": {"*bn*": _BN, "*.1": _BN, "fc": {"kernel": "quantized_bits(4,0,1)", "bias": "quantized_bits(8,2,1)"}},
        "default": {"kernel": "quantized_bits(3,0,1)"}}


def breakdown(data: bytes) -> dict[str, int]:
    """Bytes of each part of a stream; the parts sum to its length."""
    parts: Counter[str] = Counter({"file header": 12})
    for _, uh, payload in UnitReader(io.BytesIO(data), DEFAULT_LIMITS):
        parts["unit headers (16 B each)"] += 16
        if uh.unit_type == UNIT_TENSOR:
            r = ByteReader(payload)
            th = TensorHeader.parse(r, DEFAULT_LIMITS)
            name, shape, desc = 2 + len(th.name.encode()), 2 + 8 * len(th.shape), len(th.quant.to_bytes())
            parts["tensor names"] += name
            parts["tensor dtypes and shapes"] += shape
            parts["tensor descriptors"] += desc
            parts["tensor pipelines"] += r.offset - name - shape - desc
            parts["tensor payloads"] += len(payload) - r.offset
        elif uh.unit_type == UNIT_TENSOR_GROUP:
            group = GroupUnit.parse(ByteReader(payload), DEFAULT_LIMITS)
            parts["group: coded directory"] += len(group.coded_directory)
            parts["group: coded data"] += len(group.coded_data)
            parts["group: counts and pipelines"] += (len(payload) - len(group.coded_directory)
                                                     - len(group.coded_data))
        else:
            parts[UNIT_NAMES.get(uh.unit_type, "other") + " payload"] += len(payload)
    assert sum(parts.values()) == len(data)
    return dict(parts)


def best_seconds(fn: Callable[[], object], repeat: int) -> float:
    """The shortest of ``repeat`` wall times of ``fn()``, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def timings(tensors: dict, topology: dict | None, level: int, plain: bytes, grouped: bytes, repeat: int) -> dict:
    """Encode and decode wall times (best of ``repeat``) without and with groups, and with / without ratios."""
    row: dict[str, float | int] = {"repeat": repeat}
    for step, without, with_ in (
            ("encode", lambda: Encoder(level=level, group_tensors=False).encode(tensors, topology=topology),
             lambda: Encoder(level=level).encode(tensors, topology=topology)),
            ("decode", lambda: decode_arrays(plain), lambda: decode_arrays(grouped))):
        row[f"{step}_seconds_without"] = best_seconds(without, repeat)
        row[f"{step}_seconds_with"] = best_seconds(with_, repeat)
        row[f"{step}_ratio"] = row[f"{step}_seconds_with"] / row[f"{step}_seconds_without"]
    return row


def compare(name: str, tensors: dict, float32_bytes: int, level: int = 3, topology: dict | None = None,
            repeat: int = 7) -> dict:
    grouped, report = Encoder(level=level).encode(tensors, topology=topology)
    plain, _ = Encoder(level=level, group_tensors=False).encode(tensors, topology=topology)
    row = {"model": name, "tensors": len(tensors), "grouped_tensors": len(report.grouped),
           "float32_bytes": float32_bytes, "bytes_without_groups": len(plain), "bytes_with_groups": len(grouped),
           "ratio_without": float32_bytes / len(plain), "ratio_with": float32_bytes / len(grouped),
           "breakdown_without": breakdown(plain), "breakdown_with": breakdown(grouped),
           **timings(tensors, topology, level, plain, grouped, repeat)}
    print(f"\n{name}: {len(tensors)} tensors ({len(report.grouped)} grouped), float32 {float32_bytes} B: "
          f"{len(plain)} B ({row['ratio_without']:.1f}x) -> {len(grouped)} B ({row['ratio_with']:.1f}x), "
          f"{len(grouped) / len(plain):.3f} of the size")
    for part in sorted(set(row["breakdown_without"]) | set(row["breakdown_with"])):
        print(f"  {part:34s} {row['breakdown_without'].get(part, 0):8d} {row['breakdown_with'].get(part, 0):8d}")
    for step in ("encode", "decode"):
        print(f"  {step} (best of {repeat}): {1e3 * row[f'{step}_seconds_without']:.2f} ms without groups, "
              f"{1e3 * row[f'{step}_seconds_with']:.2f} ms with ({row[f'{step}_ratio']:.2f}x)")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stream", action="append", default=[], help="an existing stream to re-encode (repeatable)")
    ap.add_argument("--level", type=int, default=19, help="zstd level of the re-encoded streams (the search's final "
                    "encode uses 19)")
    ap.add_argument("--float32-bytes", type=int, action="append", default=[],
                    help="float32 size to compare each --stream with (default: its own tensors in float32)")
    ap.add_argument("--repeat", type=int, default=7, help="timed runs of each encode and decode (the best is kept)")
    ap.add_argument("--out", default=str(ROOT / "tests/benchmarks/results/tensor_group.json"))
    args = ap.parse_args()
    rows = []
    for name, build in (("resnet8", ResNet8), ("mobilenetv2", MobileNetV2Small)):
        torch.manual_seed(0)
        model = build(1, 10, 16).train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(8, 1, 28, 28))
        q = quantize_model(model.eval(), PLAN)
        float32 = sum(4 * t.numel() for t in model.state_dict().values())
        rows.append(compare(name, tensors_from(q), float32, repeat=args.repeat))
    for i, path in enumerate(args.stream):
        tensors, topology = stored_codes(Path(path).read_bytes())
        float32 = args.float32_bytes[i] if i < len(args.float32_bytes) else sum(
            4 * (t.codes.size if isinstance(t, CodedTensor) else t[0].size) for t in tensors.values())
        rows.append(compare(Path(path).name, tensors, float32, args.level, topology, args.repeat))
    out = Path(args.out)
    run = {r["model"] for r in rows}
    kept = [r for r in (json.loads(out.read_text()) if out.exists() else []) if r["model"] not in run]
    out.write_text(json.dumps(rows + kept, indent=2) + "\n")
    print(f"\nwrote {out}" + (f" (kept the rows of an earlier run: {[r['model'] for r in kept]})" if kept else ""))


if __name__ == "__main__":
    main()
