"""Encode speed of the calibrated MiniLM settings, phase by phase, against Fraunhofer NNCodec in the same run.

    HF_HUB_OFFLINE=1 nice python tests/benchmarks/bench_encode_speed.py --nncodec-venv VENV --out DIR
    HF_HUB_OFFLINE=1 nice python tests/benchmarks/bench_encode_speed.py --skip-nncodec     # README's NNCodec figures

The settings are the best-rate rows of ``bench_minilm.py`` (all-MiniLM-L6-v2, 22.7 M parameters): calibrated
per-tensor steps (:func:`nncodec.calibrate_step_scales` on the 32 calibration sentences) with dependent
quantization or GPTQ, per-input-channel Fisher steps, and the plain calibrated encode; and the first two with
``step_scales="fisher"`` (per-tensor factors from the same Fisher pass, no sensitivity probes). Each encode is timed
``--repeats`` times, calibration included (the median is reported); the phases are the seconds spent in
the sensitivity calibration, the Fisher importances, GPTQ's Hessians, inverse factors and column loop, the
dependent (trellis) search, and the entropy coding and stream writing (:meth:`Encoder.encode`); the rest
(conversions, per-channel steps) is ``other``. Fraunhofer NNCodec 2.1.3 runs its two settings nearest to
nncodec's at cosine >= 0.998 (qp -32) and >= 0.994 (qp -32 DQ) in its own venv (see ``bench_minilm.py``),
also ``--repeats`` times, interleaved with nncodec's runs (each repeat runs NNCodec, then every setting) so
both see the same load. The machine's load average is printed before and after: the cores may be shared.
Each row also records CPU seconds (all threads of the process, NNCodec's measured the same way inside its
script) and their ratio, which other jobs on shared cores distort less than wall time. Writes
``bench_encode_speed.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_minilm as minilm  # noqa: E402

#: the calibrated settings: (label, encode options besides step_scales and the calibration)
SETTINGS = [
    ("dependent + Fisher column steps, rel_step 0.2",
     {"rel_step": 0.2, "rounding": "dependent", "column_steps": "fisher", "column_power": 0.5}),
    ("GPTQ + Fisher column steps, rel_step 0.185",
     {"rel_step": 0.185, "rounding": "gptq", "column_steps": "fisher", "column_power": 0.5}),
    ("GPTQ, rel_step 0.15", {"rel_step": 0.15, "rounding": "gptq"}),
    ("nearest + Fisher column steps, rel_step 0.27",
     {"rel_step": 0.27, "rounding": "nearest", "column_steps": "fisher", "column_power": 0.5}),
    ("calibrated steps only, rel_step 0.2", {"rel_step": 0.2}),
    ("dependent + Fisher column and step scales, rel_step 0.2",
     {"rel_step": 0.2, "rounding": "dependent", "column_steps": "fisher", "column_power": 0.5,
      "step_scales": "fisher"}),
    ("GPTQ + Fisher column and step scales, rel_step 0.185",
     {"rel_step": 0.185, "rounding": "gptq", "column_steps": "fisher", "column_power": 0.5,
      "step_scales": "fisher"}),
]
#: NNCodec's settings timed here (qp, dependent quantization)
NNCODEC_SETTINGS = [[-32, False], [-32, True]]


class Phases:
    """Seconds spent in named library functions, patched for the duration of a ``with`` block."""

    def __init__(self) -> None:
        import nncodec.encoder
        import nncodec.quant.gptq
        import nncodec.rd_encode
        import nncodec.sensitivity

        self.targets = [
            ("sensitivity calibration", nncodec.sensitivity, "calibrate_step_scales"),
            ("Fisher importances", nncodec.rd_encode, "fisher_importance"),
            ("GPTQ Hessians", nncodec.quant.gptq, "collect_hessians"),
            ("GPTQ inverse factors", nncodec.quant.gptq, "inverse_factor"),
            ("GPTQ column loop", nncodec.quant.gptq, "gptq_codes"),
            ("dependent search", nncodec.rd_encode, "dependent_coded"),
            ("entropy coding + stream", nncodec.encoder.Encoder, "encode"),
        ]
        self.seconds: dict[str, float] = defaultdict(float)

    def _timed(self, label: str, fn):  # noqa: ANN001, ANN202
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t0

        return wrapper

    @contextlib.contextmanager
    def active(self):  # noqa: ANN201
        saved = [(owner, name, getattr(owner, name)) for _, owner, name in self.targets]
        for (label, owner, name), (_, _, fn) in zip(self.targets, saved):
            setattr(owner, name, self._timed(label, fn))
        try:
            yield self
        finally:
            for owner, name, fn in saved:
                setattr(owner, name, fn)


def time_setting(fid: "minilm.Fidelity", opts: dict) -> tuple[float, dict[str, float], bytes, float]:
    """One calibrated encode from scratch: seconds, seconds per phase, the stream, CPU seconds (all threads)."""
    import nncodec

    model = fid.st[0].auto_model
    phases = Phases()
    with phases.active():
        c0 = time.process_time()
        t0 = time.perf_counter()
        if opts.get("step_scales") == "fisher":  # the factors come from the encode's own Fisher pass
            full = dict(opts)
        else:
            scales = nncodec.calibrate_step_scales(model, [minilm.CALIBRATION],
                                                   forward=lambda m, batch: fid.embed(batch), progress=False,
                                                   reuse=True)
            full = {"step_scales": scales, **opts}
        if "rounding" in opts:
            full.update(calibration=[minilm.CALIBRATION], forward=fid.embed_grad, topology=False)
            data = nncodec.encode(model, **full)
        else:
            data = nncodec.encode(fid.state, **full)
        total = time.perf_counter() - t0
        cpu = time.process_time() - c0
    seconds = dict(phases.seconds)
    seconds["other"] = total - sum(seconds.values())
    return total, seconds, data, cpu


def nncodec_script() -> str:
    """``bench_minilm``'s NNCodec script, also reporting each encode's CPU seconds (``encode_cpu_s``) when its
    text is as expected (else as it is)."""
    script = minilm.NNC_SCRIPT
    edits = [("    t0 = time.perf_counter()\n    bs = nnc.compress",
              "    c0 = time.process_time()\n    t0 = time.perf_counter()\n    bs = nnc.compress"),
             ("    enc = time.perf_counter() - t0\n",
              "    enc = time.perf_counter() - t0\n    enc_cpu = time.process_time() - c0\n"),
             ('"encode_s": enc,', '"encode_s": enc, "encode_cpu_s": enc_cpu,')]
    if not all(script.count(old) == 1 for old, _ in edits):
        return script
    for old, new in edits:
        script = script.replace(old, new)
    return script


def time_nncodec(venv: Path, tmp: Path, threads: int, settings: list) -> dict[str, tuple[float, int, float | None]]:
    """One NNCodec run over ``settings`` (of NNCODEC_SETTINGS; a subprocess, on ``tmp/weights.npz``):
    ``{setting: (encode seconds, stream bytes, encode CPU seconds or None)}``; empty when it failed (its error
    printed)."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # both packages are called nncodec
    env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run([str(venv / "bin" / "python"), str(tmp / "nnc_run.py"), str(tmp / "weights.npz"),
                           str(tmp / "nnc"), json.dumps(settings)],
                          capture_output=True, text=True, cwd=tmp, env=env)
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        return {}
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            out[f"qp {r['qp']}{' DQ' if r['dq'] else ''}"] = (r["encode_s"], r["bytes"], r.get("encode_cpu_s"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nncodec-venv", type=Path, help="virtual environment with Fraunhofer NNCodec 2.1.3")
    ap.add_argument("--skip-nncodec", action="store_true", help="compare against the README's NNCodec figures")
    ap.add_argument("--repeats", type=int, default=3, help="encodes per setting (the median is reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    ap.add_argument("--only", type=int, nargs="*", help="indices of SETTINGS to time (default: all)")
    ap.add_argument("--nncodec-only", type=int, nargs="*",
                    help="indices of NNCODEC_SETTINGS to run (default: all; 0 is qp -32 alone)")
    ap.add_argument("--out", type=Path, default=Path("bench_encode_speed"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    print(json.dumps({"load_average_before": load_before, "threads": args.threads}), flush=True)
    fid = minilm.Fidelity()
    n_params = sum(v.numel() for v in fid.state.values())
    chosen = [SETTINGS[i] for i in args.only] if args.only else SETTINGS
    runs: dict[str, list[tuple[float, dict[str, float], bytes, float]]] = {label: [] for label, _ in chosen}
    anchor_runs: dict[str, list[tuple[float, int, float | None]]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if args.nncodec_venv and not args.skip_nncodec:
            import numpy as np

            np.savez(tmp_path / "weights.npz",
                     **{k: v.numpy() for k, v in fid.state.items() if v.is_floating_point()})
            (tmp_path / "nnc_run.py").write_text(nncodec_script())
        for rep in range(args.repeats):  # interleaved, so both codecs see the same load
            if args.nncodec_venv and not args.skip_nncodec:
                anchors = [NNCODEC_SETTINGS[i] for i in args.nncodec_only] if args.nncodec_only else NNCODEC_SETTINGS
                for setting, got in time_nncodec(args.nncodec_venv, tmp_path, args.threads, anchors).items():
                    anchor_runs[setting].append(got)
                    print(json.dumps({"repeat": rep, "NNCodec": setting, "encode_s": got[0]}), flush=True)
            for label, opts in chosen:
                runs[label].append(time_setting(fid, opts))
                print(json.dumps({"repeat": rep, "setting": label, "encode_s": runs[label][-1][0],
                                  "cpu_s": runs[label][-1][3], "phases_s": runs[label][-1][1]}), flush=True)
    rows = []
    for label, _ in chosen:
        got = runs[label]
        digests = {hashlib.sha256(r[2]).hexdigest()[:16] for r in got}
        rows.append({"setting": label, "encode_s": [r[0] for r in got],
                     "median_s": statistics.median(r[0] for r in got),
                     "cpu_s": [r[3] for r in got], "median_cpu_s": statistics.median(r[3] for r in got),
                     "phases_median_s": {k: statistics.median(r[1].get(k, 0.0) for r in got) for k in got[0][1]},
                     "bits_per_param": 8 * len(got[0][2]) / n_params,
                     "streams_identical_across_runs": len(digests) == 1, "sha256_16": sorted(digests)})
    if anchor_runs:
        anchor = {s: {"encode_s": [a[0] for a in r], "median_s": statistics.median(a[0] for a in r),
                      "bits_per_param": 8 * r[0][1] / n_params} for s, r in anchor_runs.items()}
        for s, r in anchor_runs.items():
            if all(a[2] is not None for a in r):
                anchor[s].update(cpu_s=[a[2] for a in r], median_cpu_s=statistics.median(a[2] for a in r))
        anchor_source = "same run, interleaved"
    else:
        anchor = {s: {"median_s": e, "bits_per_param": b} for s, b, _, e, _ in minilm.NNCODEC_FIGURES
                  if s in ("qp -32", "qp -32 DQ")}
        anchor_source = "README (earlier run, quiet machine)"
    load_after = os.getloadavg()
    fastest_anchor = min((e["median_s"] for e in anchor.values()), default=None)
    for r in rows:
        r["speedup_vs_nncodec"] = {s: e["median_s"] / r["median_s"] for s, e in anchor.items()}
        if anchor_runs:  # repeat by repeat (the same load, run right after each other)
            r["speedup_per_repeat"] = {s: [a[0] / t for a, t in zip(anchor_runs[s], r["encode_s"])]
                                       for s in anchor_runs}
        # CPU seconds (all threads) are less at the mercy of other jobs than wall time
        r["cpu_speedup_vs_nncodec"] = {s: e["median_cpu_s"] / r["median_cpu_s"] for s, e in anchor.items()
                                       if "median_cpu_s" in e}
    result = {"load_average_before": load_before, "load_average_after": load_after, "threads": args.threads,
              "repeats": args.repeats, "nncodec": anchor, "nncodec_source": anchor_source, "rows": rows}
    (args.out / "bench_encode_speed.json").write_text(json.dumps(result, indent=2))
    print(f"\nload average before {load_before}, after {load_after}; torch threads {args.threads}; "
          f"median of {args.repeats}; NNCodec: {anchor_source}")
    for s, e in anchor.items():
        bits = e.get("bits_per_param", float("nan"))
        cpu = f", CPU {e['median_cpu_s']:.2f} s" if "median_cpu_s" in e else ""
        print(f"  NNCodec 2.1.3 {s:10s} {e['median_s']:7.2f} s{cpu}  ({bits:.3f} bits/param)")
    print(f"\n{'setting':58s} {'enc s':>7s} {'x vs NNC':>9s}  phases (s)")
    for r in rows:
        ratio = fastest_anchor / r["median_s"] if fastest_anchor else float("nan")
        detail = ", ".join(f"{k} {v:.2f}" for k, v in r["phases_median_s"].items() if v >= 0.005)
        print(f"{r['setting']:58s} {r['median_s']:7.2f} {ratio:9.2f}  {detail}; CPU {r['median_cpu_s']:.2f} s "
              f"({', '.join(f'{v:.2f}x {s}' for s, v in r['cpu_speedup_vs_nncodec'].items()) or 'NNCodec CPU not known'})")


if __name__ == "__main__":
    main()
