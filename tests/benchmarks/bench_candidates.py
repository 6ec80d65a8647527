"""Benchmark: building one search candidate of the seed example (conv16-conv32-conv64-dense10). Not a CI test.

    python tests/benchmarks/bench_candidates.py [--plans 12] [--seed 0]

For ``--plans`` random plans of the demo's search space, times the three steps a trial runs before training:
resizing (anchor: ``resize_groups`` on each candidate, which builds a dependency graph and its channel
groups every time; versus a :class:`~nncodec.prune.graph.Resizer` made once for the reference), installing
the fake quantizers, and the graph energy estimate (a ``torch.export`` per candidate). Checks that both
resize paths give identical weights and energies, prints means and the same-run ratio, and writes
results/candidates.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

from pathlib import Path

from nncodec.energy.estimate import estimate_energy
from nncodec.models import seed_example_cnn
from nncodec.prune.graph import Resizer, resize_groups
from nncodec.quant.layers import quantize_model
from nncodec.search import SearchSpace
from nncodec.search.controllers import _energy_plan
from nncodec.search.runner import SearchConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plans", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    reference = seed_example_cnn().eval()
    shape = (1, 28, 28)
    space = SearchSpace.from_model(reference, shape, torch.rand(64, *shape))
    params = space.parameters()
    rng = random.Random(args.seed)
    plans = [space.plan_from({k: rng.choice(v) for k, v in params.items()}) for _ in range(args.plans)]
    settings = SearchConfig().energy_settings
    estimate_energy(reference, shape, **settings)  # first export warms torch.export up
    t0 = time.perf_counter()
    resizer = Resizer(reference, shape)
    setup = time.perf_counter() - t0
    anchor, reused, quant, energy = [], [], [], []
    for i, plan in enumerate(plans):
        torch.manual_seed(i)
        t0 = time.perf_counter()
        plain = resize_groups(reference, shape, plan.widths)
        anchor.append(time.perf_counter() - t0)
        torch.manual_seed(i)
        t0 = time.perf_counter()
        model = resizer.resize(plan.widths)
        reused.append(time.perf_counter() - t0)
        a, b = plain.state_dict(), model.state_dict()
        if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
            raise SystemExit(f"plan {i}: the Resizer's candidate differs from resize_groups'")
        t0 = time.perf_counter()
        model, plain = quantize_model(model, plan, inplace=True), quantize_model(plain, plan, inplace=True)
        quant.append((time.perf_counter() - t0) / 2)
        t0 = time.perf_counter()
        e = estimate_energy(model, shape, _energy_plan(plan), **settings).total_pj
        energy.append(time.perf_counter() - t0)
        if e != estimate_energy(plain, shape, _energy_plan(plan), **settings).total_pj:
            raise SystemExit(f"plan {i}: energies differ")
    mean = statistics.mean
    print(f"{args.plans} random plans of the demo's space, {torch.get_num_threads()} threads")
    print(f"resize_groups per candidate (anchor)   {mean(anchor):7.3f} s")
    print(f"Resizer.resize per candidate           {mean(reused):7.3f} s   ({mean(anchor) / mean(reused):.1f}x faster; "
          f"Resizer set up once in {setup:.2f} s)")
    print(f"fake quantizers per candidate          {mean(quant):7.3f} s")
    print(f"graph energy estimate per candidate    {mean(energy):7.3f} s")
    print("candidates and energies identical on both paths")
    out = Path(__file__).resolve().parent / "results" / "candidates.json"
    out.write_text(json.dumps({"plans": args.plans, "threads": torch.get_num_threads(),
                               "load_average": Path("/proc/loadavg").read_text().split()[:3],
                               "resize_groups_s": mean(anchor), "resizer_s": mean(reused), "resizer_setup_s": setup,
                               "ratio": mean(anchor) / mean(reused), "quantizers_s": mean(quant),
                               "energy_s": mean(energy)}, indent=2))


if __name__ == "__main__":
    main()
