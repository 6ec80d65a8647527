"""Scale check: encode and decode a synthetic float32 model of several GB, each step in a fresh process.

    python tests/benchmarks/bench_scale.py [--gb 4] [--tensor-mb 64] [--dir /tmp] [--out results/scale.json]

The model (``--gb`` of float32 in tensors of ``--tensor-mb``, Gaussian with per-tensor scales, a few
biases) is written as ``.npy`` files to a temporary folder under ``--dir``. The encoder reads them through
a mapping that memory-maps one file per access, so only the tensor being coded is resident. Each setting
(lossless, ``bits=8``) is encoded to a file in a new process (peak RSS = VmHWM, MB/s = float32 bytes per
second; the ratio to the largest tensor counts the peak over the RSS after ``import nncodec``, so the
encoder's own modules, imported on first use, count in it), then decoded in another new process tensor by tensor (``iter_tensors``; lossless output compared
with the source). Needs about 2.5x ``--gb`` of free disk. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MB = 1e6

ENCODE = textwrap.dedent("""
    import json, sys, time
    from collections.abc import Mapping
    from pathlib import Path
    import numpy as np
    import nncodec

    class NpyFolder(Mapping):
        '''{name: array} over a folder of .npy files, memory-mapped on access (nothing is held).'''
        def __init__(self, folder):
            self.files = {p.stem: p for p in sorted(Path(folder).glob("*.npy"))}
        def __getitem__(self, name):
            return np.load(self.files[name], mmap_mode="r")
        def __iter__(self):
            return iter(self.files)
        def __len__(self):
            return len(self.files)

    folder, dst, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    floor = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:"))
    t0 = time.perf_counter()
    nncodec.encode_arrays(NpyFolder(folder), dst, **opts)
    seconds = time.perf_counter() - t0
    hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({"seconds": seconds, "peak_rss": hwm, "rss_after_imports": floor}))
""")

DECODE = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import numpy as np
    from nncodec.decoder import iter_tensors

    src, folder, lossless = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
    t0 = time.perf_counter()
    n = mismatched = 0
    for th, arr in iter_tensors(src):
        n += arr.nbytes
        if lossless and not np.array_equal(arr, np.load(folder / (th.name + ".npy"), mmap_mode="r")):
            mismatched += 1
    seconds = time.perf_counter() - t0
    hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({"seconds": seconds, "peak_rss": hwm, "decoded_bytes": n, "mismatched_tensors": mismatched}))
""")


def write_model(folder: Path, gb: float, tensor_mb: int) -> tuple[int, int]:
    """Write the synthetic model; return (total bytes, largest tensor bytes)."""
    rng = np.random.default_rng(0)
    rows = tensor_mb * (1 << 20) // (4 * 4096)
    count = max(1, int(gb * (1 << 30) // (rows * 4096 * 4)))
    total = 0
    for i in range(count):
        w = rng.standard_normal((rows, 4096), dtype=np.float32)
        w *= np.float32(rng.uniform(0.01, 0.1))
        np.save(folder / f"layer{i:03d}.weight.npy", w)
        np.save(folder / f"layer{i:03d}.bias.npy", rng.standard_normal(4096, dtype=np.float32) * np.float32(0.01))
        total += w.nbytes + 4096 * 4
    return total, rows * 4096 * 4


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages of the machine (others' jobs slow every figure down)."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def run(code: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=4.0)
    ap.add_argument("--tensor-mb", type=int, default=64)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "scale.json")
    args = ap.parse_args()
    need = 2.6 * args.gb * (1 << 30)
    if shutil.disk_usage(args.dir).free < need:
        sys.exit(f"need {need / 1e9:.1f} GB free in {args.dir}")
    result: dict = {"cpu_count": os.cpu_count(), "rows": {}, "load_average_before": load_average()}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="nncodec-scale-") as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        t0 = time.perf_counter()
        total, largest = write_model(folder, args.gb, args.tensor_mb)
        result.update(model_bytes=total, largest_tensor_bytes=largest, tensors=len(list(folder.glob("*.npy"))),
                      write_seconds=time.perf_counter() - t0)
        print(f"model: {total / 1e9:.2f} GB in {result['tensors']} tensors, largest {largest / MB:.0f} MB", flush=True)
        for label, opts in (("lossless", {}), ("bits=8", {"bits": 8})):
            dst = Path(tmp) / "model.nnc"
            enc = run(ENCODE, str(folder), str(dst), json.dumps(opts))
            dec = run(DECODE, str(dst), str(folder), "1" if label == "lossless" else "0")
            result["rows"][label] = row = {
                "file_bytes": dst.stat().st_size, "encode_s": enc["seconds"], "encode_mb_s": total / MB / enc["seconds"],
                "encode_peak_rss": enc["peak_rss"], "encode_rss_after_imports": enc["rss_after_imports"],
                "encode_peak_vs_largest": (enc["peak_rss"] - enc["rss_after_imports"]) / largest,
                "decode_s": dec["seconds"], "decode_mb_s": total / MB / dec["seconds"],
                "decode_peak_rss": dec["peak_rss"], "decode_mismatched_tensors": dec["mismatched_tensors"]}
            print(f"{label:9s} file {row['file_bytes'] / 1e9:.2f} GB | encode {row['encode_s']:.0f} s, "
                  f"{row['encode_mb_s']:.0f} MB/s, peak RSS {row['encode_peak_rss'] / MB:.0f} MB "
                  f"(over the imports: {row['encode_peak_vs_largest']:.2f}x largest) | decode {row['decode_s']:.0f} s, "
                  f"{row['decode_mb_s']:.0f} MB/s, peak RSS {row['decode_peak_rss'] / MB:.0f} MB, "
                  f"mismatched {row['decode_mismatched_tensors']}", flush=True)
            dst.unlink()
    result["load_average_after"] = load_average()
    print(f"load average before {result['load_average_before']}, after {result['load_average_after']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
