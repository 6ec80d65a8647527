"""Incremental updates on MiniLM: a short fine-tune coded as a delta from the base vs as a full encode.

    HF_HUB_OFFLINE=1 python tests/benchmarks/bench_delta.py --out bench_delta [--steps 30]

The task (written here): pull paraphrase pairs together and push the other sentences of a batch apart
(in-batch contrastive loss, scale 20), Adam at lr 2e-5 for ``--steps`` steps of 8 pairs. Then the fine-tuned
model is encoded (a) whole and (b) as a delta from the base (``encode(tuned, base=base)``), losslessly and
at the same ``rel_step`` values (quantized deltas are grid-aligned: they rebuild exactly the full
encode's tensors, so the fidelity is equal by construction; checked per row), and each decoded model is scored by the
mean cosine between its embeddings and the float fine-tuned model's on the evaluation sentences of
bench_minilm. Writes bench_delta.json and the streams into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from bench_minilm import SENTENCES, model_dir  # noqa: E402

PAIRS = [("How do I reset my password?", "I forgot my password, how can I change it?"),
         ("The flight was delayed by two hours.", "Our plane left two hours late."),
         ("Where is the nearest pharmacy?", "Is there a drugstore close by?"),
         ("He bought a new car last week.", "Last week he purchased a new automobile."),
         ("The soup is too salty.", "There is too much salt in the soup."),
         ("Can you recommend a good book?", "What novel would you suggest I read?"),
         ("The meeting was moved to Friday.", "We rescheduled the meeting for Friday."),
         ("She won the chess tournament.", "She took first place in the chess competition."),
         ("It is going to rain this afternoon.", "Rain is expected later today."),
         ("The battery of my phone died.", "My phone ran out of charge."),
         ("They adopted a puppy from the shelter.", "They took home a young dog from the animal shelter."),
         ("The museum is closed on Mondays.", "On Mondays the museum does not open."),
         ("I need to renew my passport.", "My passport has to be renewed."),
         ("The team scored in the last minute.", "A late goal was scored by the team."),
         ("Turn left at the second traffic light.", "At the second set of lights, go left."),
         ("The printer is out of paper.", "There is no paper left in the printer."),
         ("He is allergic to peanuts.", "Peanuts give him an allergic reaction."),
         ("The concert tickets sold out quickly.", "Tickets for the concert were gone fast."),
         ("Please close the window.", "Could you shut the window?"),
         ("The bakery opens at seven.", "At seven in the morning the bakery opens."),
         ("She speaks three languages fluently.", "She is fluent in three languages."),
         ("The road is blocked by snow.", "Snow has blocked the road."),
         ("Our internet connection is very slow.", "The network here is really slow."),
         ("The kids are playing in the garden.", "The children play outside in the yard.")]


def finetune(st, steps: int, lr: float = 2e-5, seed: int = 0) -> float:  # noqa: ANN001
    torch.manual_seed(seed)
    model = st[0].auto_model
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randperm(len(PAIRS))[:8].tolist()
        a = st.tokenize([PAIRS[i][0] for i in idx])
        b = st.tokenize([PAIRS[i][1] for i in idx])
        ea = torch.nn.functional.normalize(st(a)["sentence_embedding"], dim=1)
        eb = torch.nn.functional.normalize(st(b)["sentence_embedding"], dim=1)
        loss = torch.nn.functional.cross_entropy(20 * ea @ eb.T, torch.arange(len(idx)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            print(json.dumps({"step": step, "loss": float(loss)}), flush=True)
    model.eval()
    return time.perf_counter() - t0


def main() -> None:
    import nncodec
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench_delta"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=2e-5, help="Adam learning rate of the fine-tune")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    base = load_file(str(model_dir() / "model.safetensors"))
    st = SentenceTransformer(str(model_dir()), device="cpu")
    train_s = finetune(st, args.steps, args.lr)
    model = st[0].auto_model
    tuned = {k: v.detach().clone() for k, v in model.state_dict().items() if k in base}
    changed = sum(int((tuned[k] != base[k]).sum()) for k in tuned)
    n_params = sum(v.numel() for v in tuned.values())
    with torch.no_grad():
        ref = st.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True)

    def cosine(decoded: dict) -> float:
        model.load_state_dict(decoded, strict=False)
        e = st.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True)
        model.load_state_dict(tuned, strict=False)
        return float((e * ref).sum(1).mean())

    rows = []
    for label, opts in [("lossless", {}), *[(f"rel_step {r}", {"rel_step": r}) for r in (0.05, 0.1, 0.15, 0.2)]]:
        sizes, decodes = {}, {}
        for kind in ("full", "delta"):
            extra = {"base": base} if kind == "delta" else {}
            t0 = time.perf_counter()
            data = nncodec.encode(tuned, **opts, **extra)
            enc = time.perf_counter() - t0
            decoded = decodes[kind] = nncodec.decode(data, **extra)
            if not opts:
                assert all(torch.equal(decoded[k], tuned[k]) for k in tuned), "lossless delta must be exact"
            (args.out / f"{kind}_{label.replace(' ', '_')}.nnc").write_bytes(data)
            sizes[kind] = {"bits_per_param": 8 * len(data) / n_params, "cosine": cosine(decoded), "encode_s": enc}
        rows.append({"setting": label, **{f"{k}_{m}": v for k, d in sizes.items() for m, v in d.items()},
                     "delta_vs_full": sizes["delta"]["bits_per_param"] / sizes["full"]["bits_per_param"],
                     # grid-aligned deltas (format 1.3) rebuild exactly the full encode's tensors
                     "delta_equals_full_decode": all(torch.equal(decodes["delta"][k], decodes["full"][k])
                                                     for k in decodes["full"])})
        print(json.dumps(rows[-1]), flush=True)
    result = {"parameters": n_params, "finetune_steps": args.steps, "finetune_lr": args.lr, "finetune_s": train_s,
              "changed_parameters": changed, "rows": rows}
    with torch.no_grad():
        result["base_cosine"] = cosine(base)  # how far the fine-tune moved the embeddings
    (args.out / "bench_delta.json").write_text(json.dumps(result, indent=2))
    print(f"\nfine-tune: {args.steps} steps, {changed} of {n_params} parameters changed")
    print(f"{'setting':14s} {'full b/p':>9s} {'full cos':>9s} {'delta b/p':>9s} {'delta cos':>9s} {'ratio':>6s}")
    for r in rows:
        print(f"{r['setting']:14s} {r['full_bits_per_param']:9.3f} {r['full_cosine']:9.6f} "
              f"{r['delta_bits_per_param']:9.3f} {r['delta_cosine']:9.6f} {r['delta_vs_full']:6.3f}")


if __name__ == "__main__":
    main()
