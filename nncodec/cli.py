"""The ``nncodec`` command line. The only module that configures logging or prints."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ConfigError, NNCodecError

log = logging.getLogger("nncodec")


class _Failure(Exception):
    """A one-line error the CLI prints as is (exit code 2)."""


@contextlib.contextmanager
def _about(path: Any) -> Iterator[None]:
    """Errors inside name ``path`` and their class, on one line."""
    try:
        yield
    except (NNCodecError, OSError) as exc:
        if isinstance(exc, OSError) and exc.filename is not None:
            raise _Failure(_one_line(f"{exc.strerror or exc}: {exc.filename}")) from None
        raise _Failure(_one_line(f"{path}: {type(exc).__name__}: {exc}")) from None


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _read_tensors(path: Path) -> dict[str, Any]:
    """Tensors from ``.pt`` (state_dict, ``weights_only=True``), ``.safetensors`` or ``.npz``; any problem
    with the file is a :class:`ConfigError` naming it."""
    if not path.is_file():
        raise ConfigError(f"input file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".pt", ".pth", ".bin", ".safetensors", ".npz"):
        raise ConfigError(f"unknown input type {suffix!r}: use .pt, .safetensors or .npz")
    if suffix != ".safetensors" and not zipfile.is_zipfile(path):
        kind = "an .npz (zip) archive" if suffix == ".npz" else "a torch.save zip archive (torch >= 1.6)"
        raise ConfigError(f"{path} is not {kind}")
    try:
        obj = _load_tensor_file(path, suffix)
    except OSError:
        raise
    except Exception as exc:  # each library raises its own types for a bad file (pickle, zip, header errors)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path} is not a readable {suffix} tensor file: {first}") from None
    if suffix != ".npz" and isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConfigError(f"{path} holds a {type(obj).__name__}, not a state_dict")
    return obj


def _load_tensor_file(path: Path, suffix: str) -> Any:
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _write_tensors(tensors: dict[str, Any], path: Path) -> None:
    from .atomic import write_atomic

    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import save

        # safetensors refuses tensors that share memory: a tied tensor (an alias) is written as its own copy
        seen: set[int] = set()
        unshared = {}
        for k, v in tensors.items():
            v = v.contiguous()
            unshared[k] = v.clone() if v.numel() and v.data_ptr() in seen else v
            seen.add(v.data_ptr())
        write_atomic(path, [save(unshared)])
    elif suffix in (".pt", ".pth"):
        import torch

        buf = io.BytesIO()
        torch.save(tensors, buf)
        write_atomic(path, [buf.getvalue()])
    elif suffix == ".npz":
        import numpy as np
        import torch

        arrays = {}
        for k, v in tensors.items():
            if v.dtype == torch.bfloat16:
                log.warning("%s is bfloat16, which .npz cannot hold: written as float32", k)
                v = v.float()
            arrays[k] = v.numpy()
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        write_atomic(path, [buf.getvalue()])
    else:
        raise ConfigError(f"unknown output type {suffix!r}: use .safetensors, .npz or .pt")


def _cmd_encode(args: argparse.Namespace) -> int:
    from .torch_io import encode_with_report

    meta = {}
    for item in args.metadata or []:
        if "=" not in item:
            raise ConfigError(f"--metadata takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        meta[k] = v
    scales = {}
    for item in args.step_scale or []:
        pat, sep, factor = item.rpartition("=")
        try:
            scales[pat] = float(factor)
        except ValueError:
            sep = ""
        if not sep or not pat:
            raise ConfigError(f"--step-scale takes PATTERN=FACTOR, got {item!r}")
    if args.step_scales:
        try:
            loaded = json.loads(Path(args.step_scales).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--step-scales {args.step_scales}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--step-scales {args.step_scales}: expected a JSON object of name -> factor")
        scales = {**loaded, **scales}
    if scales and args.rel_step is None:
        raise ConfigError("--step-scale and --step-scales apply to --rel-step only")
    tensors = _read_tensors(Path(args.input))
    rd = {"rounding": "dependent"} if args.dependent else {}
    with _about(args.input):
        _, report = encode_with_report(tensors, args.output, bits=args.bits, step=args.step, bits_1d=args.bits_1d,
                                       rel_step=args.rel_step, step_scales=scales or None,
                                       lossless=args.lossless or (), level=args.level, metadata=meta,
                                       progress=None if not args.quiet else False,
                                       group_tensors=False if args.no_group_tensors else None,
                                       adaptive_coding=not args.no_adaptive_coding, **rd)
    if args.json:
        print(report.to_json())
    elif not args.quiet:
        print(report.table())
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    from .torch_io import decode

    t0 = time.perf_counter()
    with _about(args.input):
        tensors = decode(args.input, operating_point=args.operating_point)
    _write_tensors(tensors, Path(args.output))
    if not args.quiet:
        print(f"decoded {len(tensors)} tensors into {args.output} in {time.perf_counter() - t0:.2f} s")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .decoder import read_info

    with _about(args.file):
        info = read_info(args.file)
    if args.json:
        print(json.dumps({"version": list(info.version), "metadata": info.metadata, "total_bytes": info.total_bytes,
                          "has_topology": info.topology is not None, "aliases": info.aliases,
                          "operating_points": [p.to_dict() for p in info.operating_points],
                          "units": [asdict(u) for u in info.units]}, indent=2, ensure_ascii=False))
        return 0
    print(f"nncodec format {info.version[0]}.{info.version[1]}, {info.total_bytes} bytes, {len(info.units)} units")
    for k, v in info.metadata.items():
        print(f"  metadata {k} = {v}")
    for alias, target in info.aliases.items():
        print(f"  alias {alias} -> {target} (tied: stored once)")
    if info.operating_points:
        print(f"{len(info.operating_points)} operating points (decoders without them read point 0):")
        print(f"{'point':>7s} {'label':16s} {'energy pJ':>14s} {'accuracy':>9s} {'bytes read':>11s}")
        for p in info.operating_points:
            energy = "-" if p.energy_pj != p.energy_pj else f"{p.energy_pj:.6g}"
            accuracy = "-" if p.accuracy != p.accuracy else f"{p.accuracy:.4f}"
            print(f"{p.index:7d} {p.label[:16]:16s} {energy:>14s} {accuracy:>9s} {p.read_bytes:11d}")
    print(f"{'#':>4s} {'unit':20s} {'offset':>10s} {'bytes':>10s}  tensor")
    for u in info.units:
        t = u.tensor
        detail = ""
        if t and "refines_to_point" in t:
            detail = f"{t['name']} -> point {t['refines_to_point']} {t['scheme']}/{t['bits']}b " \
                     f"{('replace', 'residual', 'grow+residual', 'grow+replace')[t['mode']]}"
        elif t:
            bpp = f"{t['bits_per_param']:.3f}" if t["bits_per_param"] is not None else "-"
            stages = "+".join(s["id"] for s in t["pipeline"]) or "stored"
            detail = (f"{t['name']} {t['dtype']}{t['shape']} {t['scheme']}"
                      f"{'/' + str(t['bits']) + 'b' if t['scheme'] != 'none' else ''} {bpp} bits/param [{stages}]")
        if u.members:
            detail = f"{len(u.members)} tensors"
        print(f"{u.index:4d} {u.type:20s} {u.offset:10d} {u.size:10d}  {detail}")
        for m in u.members or ():
            print(f"{'':48s}  {m['name']} {m['dtype']}{m['shape']} {m['scheme']}"
                  f"{'/' + str(m['bits']) + 'b' if m['scheme'] != 'none' else ''} {m['layout']}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .decoder import iter_tensors

    t0 = time.perf_counter()
    n = nbytes = 0
    with _about(args.file):
        for _, arr in iter_tensors(args.file):
            n += 1
            nbytes += arr.nbytes
    print(f"OK: {args.file}: {n} tensors, {nbytes} decoded bytes, checksums and structure valid "
          f"({time.perf_counter() - t0:.2f} s)")
    return 0


def _load_user_model(spec: str, weights: str | None) -> Any:
    """``FILE.py:FUNCTION`` -> the module that function returns (the user's own code, run as a script)."""
    import runpy

    path, _, func = spec.rpartition(":")
    if not path or not func or not Path(path).is_file():
        raise ConfigError(f"--model takes FILE.py:FUNCTION (a function returning an nn.Module), got {spec!r}")
    namespace = runpy.run_path(path)
    if func not in namespace or not callable(namespace[func]):
        raise ConfigError(f"{path} defines no function {func!r}")
    model = namespace[func]()
    if weights:
        import torch

        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model


def _load_example(path: str) -> Any:
    """Example inputs saved with ``torch.save``: a tensor or a tuple/list of tensors (loaded without pickle)."""
    import torch

    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"--example {path}: cannot load ({exc})") from None
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return tuple(value)
    raise ConfigError(f"--example {path} must hold a tensor or a tuple of tensors, got {type(value).__name__}")


def _cmd_energy(args: argparse.Namespace) -> int:
    from torch import nn

    from .energy import estimate_energy
    from .quant.plan import Plan

    _needs_model(args, "input_shape", "weights", "example")
    if args.example and args.input_shape:
        raise ConfigError("--example and --input-shape both give the input: pass one")
    if args.model:
        model = _load_user_model(args.model, args.weights)
        shape = _load_example(args.example) if args.example else _input_shape(args.input_shape)
    else:
        from .models import seed_example_cnn

        model = seed_example_cnn()
        model.add_module("softmax", nn.Softmax(dim=1))
        shape = (1, 28, 28)
    plan = Plan.load(args.plan) if args.plan else None
    if plan is None and not args.reference and not args.model:
        plan = Plan.from_dict({"layers": {"conv*": {"kernel": "quantized_bits(8,0,1)", "bias": "quantized_bits(8,0,1)"},
                                          "dense": {"kernel": "quantized_bits(8,0,1)", "bias": "quantized_bits(8,0,1)"},
                                          "act*": {"activation": "quantized_relu(8)"}}})
    reference = tuple(args.reference.split(",")) if args.reference else None
    if reference is not None and len(reference) != 2:
        raise ConfigError("--reference takes WEIGHTS,ACCUMULATORS, e.g. int8,int16")
    report = estimate_energy(model, shape, plan, reference=reference, mode=args.mode,  # type: ignore[arg-type]
                             weights_memory=args.weights_memory, activations_memory=args.activations_memory,
                             min_sram_size=args.min_sram_size, io_traffic=args.io_traffic,
                             sparsity_aware=args.sparsity_aware, op_costs=args.op_costs, memory=args.memory,
                             accumulation_batches=args.accumulation_batches, conv_algorithm=args.conv_algorithm,
                             activation_sparsity=args.activation_sparsity)
    print(report.to_json() if args.json else report.table())
    if args.memory and not args.json:
        print(report.memory.table())
    if args.plot:
        report.plot(args.plot)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0


def _needs_model(args: argparse.Namespace, *options: str) -> None:
    """Options that only apply with ``--model`` are errors without it (never silently ignored)."""
    given = [f"--{o.replace('_', '-')}" for o in options if getattr(args, o, None) is not None]
    if given and not args.model:
        raise ConfigError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} with --model only")


def _input_shape(text: str | None) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in (text or "1,28,28").split(","))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise ConfigError(f"--input-shape takes positive integers separated by commas, got {text!r}")
    return shape


#: ``--controller`` / ``--schedule`` choices: the search registry's names (listed here so that the CLI starts
#: without importing torch; a test holds them equal to ``nncodec.search.CONTROLLERS`` and the schedules)
SEARCH_CONTROLLERS = ("random", "tpe", "gp", "hyperband", "nsga2", "rl", "evolution", "differentiable", "greedy")
SEARCH_SCHEDULES = ("single", "iterative")
#: controllers that run no trials: ``--trials`` is an error with them
NO_TRIALS = ("differentiable",)


def _trials(args: argparse.Namespace) -> int | None:
    """``--trials`` (default 30, or no count when ``--timeout`` bounds the search); an error with a controller
    that runs no trials, and a ``--timeout`` that does not apply, before any training."""
    if args.timeout is not None:
        from .search.runner import check_budget

        check_budget(args.trials, args.timeout, controller=args.controller,
                     schedule=getattr(args, "schedule", "single"),
                     options={"codesign": True} if getattr(args, "codesign", False) else {},
                     block_search=getattr(args, "block_search", False))
    if args.trials is None:
        return None if args.timeout is not None else 30
    if args.controller in NO_TRIALS:
        raise ConfigError(f"--trials does not apply to --controller {args.controller}: it trains once and runs no "
                          "trials (set its length with --option epochs=N)")
    return args.trials


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_demo, run_demo

    summary, result = run_demo(trials=_trials(args), timeout_s=args.timeout, controller=args.controller,
                               seed=args.seed, out_dir=args.out,
                               storage=args.storage, progress=None if not args.json else False)
    print(json.dumps(summary, indent=2) if args.json else format_demo(result, args.out))
    return 0


def _method_options(args: argparse.Namespace) -> dict:
    """``--option KEY=VALUE`` (VALUE parsed as JSON when it is JSON), ``--codesign``, ``--hardware JSON``."""
    options: dict = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option takes KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    if args.hardware and not args.codesign:
        raise ConfigError("--hardware sets up the co-design: add --codesign")
    if args.codesign:
        options["codesign"] = True
        if args.hardware:
            try:
                options["hardware"] = json.loads(args.hardware)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--hardware is not valid JSON: {exc}") from None
    return options


def _json_fields(text: str | None, flag: str = "--size-score", what: str = "score fields") -> dict | None:
    """``--size-score [JSON]`` / ``--finetune [JSON]``: None (off), or a JSON object of the setting's fields
    (``{}``: its defaults)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag} takes a JSON object of {what}, got {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag} takes a JSON object of {what}, got {text!r}")
    return value


def _cmd_search(args: argparse.Namespace) -> int:
    _needs_model(args, "input_shape", "weights", "data")
    trials = _trials(args)  # a wrong budget fails before the data is read and the reference trained
    if not args.model:
        if args.schedule != "single" or args.option or args.codesign or args.size_score is not None or \
                args.max_drop is not None or args.finetune is not None or args.initial_kernels != "nearest" or \
                args.final_selection or not args.final_norms or args.width_importance != "l1" or \
                args.final_recalibration != "sequential":
            raise ConfigError("--schedule, --option, --codesign, --size-score, --max-drop, --finetune, "
                              "--initial-kernels, --final-selection, --keep-final-norms, --final-recalibration and "
                              "--width-importance apply to a search of your --model, not the demo")
        return _cmd_demo(args)
    size_score = _json_fields(args.size_score)
    finetune = _json_fields(args.finetune, "--finetune", "fine-tuning fields")
    import numpy as np

    from .search import ClassifierTask, SearchConfig, SearchSpace, run_search
    from .search.controllers import searches_widths
    from .search.report import format_layer_table, format_summary

    # a wrong setting fails before the data is read and the reference trained
    config = SearchConfig(controller=args.controller, n_trials=trials, timeout_s=args.timeout,
                          proxy_epochs=args.proxy_epochs,
                          final_epochs=args.final_epochs, cost=args.cost, max_energy_pj=args.max_energy_pj,
                          max_bits=args.max_bits, max_params=args.max_params, block_search=args.block_search,
                          block_order=args.block_order, final_prune=args.prune,
                          final_prune_relative=args.prune_relative, final_prune_epochs=args.prune_epochs,
                          seed=args.seed, worker=args.worker,
                          study_name=args.study_name, storage=args.storage, out_dir=args.out,
                          progress=None if not args.json else False, schedule=args.schedule,
                          options=_method_options(args), size_score=size_score, max_accuracy_drop=args.max_drop,
                          finetune=finetune, initial_kernels=args.initial_kernels,
                          final_selection=args.final_selection, final_recalibrate_norms=args.final_norms,
                          width_importance=args.width_importance, final_recalibration=args.final_recalibration)
    if not args.data:
        raise ConfigError("--model needs --data: an .npz with x_train, y_train, x_val, y_val")
    with np.load(args.data, allow_pickle=False) as z:
        missing = {"x_train", "y_train", "x_val", "y_val"} - set(z.files)
        if missing:
            raise ConfigError(f"{args.data} lacks {sorted(missing)}")
        x_train, y_train = z["x_train"].astype(np.float32), z["y_train"].astype(np.int64)
        x_val, y_val = z["x_val"].astype(np.float32), z["y_val"].astype(np.int64)
    if args.trials_only:  # final-step options would be silently unused
        final = {"--prune": args.prune > 0, "--prune-relative": args.prune_relative,
                 "--prune-epochs": args.prune_epochs > 0, "--final-selection": args.final_selection > 0,
                 "--keep-final-norms": not args.final_norms,
                 "--final-recalibration": args.final_recalibration != "sequential"}
        given = [flag for flag, on in final.items() if on]
        if given:
            raise ConfigError(f"{', '.join(given)} set the final steps, which --trials-only does not run")
    model = _load_user_model(args.model, args.weights)
    shape = _input_shape(args.input_shape) if args.input_shape else tuple(x_train.shape[1:])
    if tuple(x_train.shape[1:]) != shape:
        raise ConfigError(f"--input-shape {','.join(map(str, shape))} does not match the data ({list(x_train.shape[1:])})")
    from .search.task import check_classifier

    check_classifier(model, x_train, (y_train, y_val), where=args.model)  # before the reference is trained
    notes = []
    if not args.weights:
        import torch

        from .train import train_classifier

        torch.manual_seed(args.seed)
        note = (f"no --weights: trained the reference first ({args.reference_epochs} epochs on x_train, "
                f"{len(x_train)} examples)")
        if not args.json:
            print(f"nncodec: {note} ...", file=sys.stderr, flush=True)
        train_classifier(model, x_train, y_train, epochs=args.reference_epochs, seed=args.seed)
        notes.append(note)
    chance = float(np.bincount(y_val).max() / len(y_val)) if len(y_val) else None
    widths: dict[str, Any] = {}
    if not searches_widths(args.controller, args.schedule):
        if args.width_mode != "layer" or args.keep_width:
            raise ConfigError(f"--width-mode / --keep-width do not apply: --controller {args.controller} with "
                              f"--schedule {args.schedule} does not search widths")
        widths["widths"] = (1.0,)
    space = SearchSpace.from_model(model, shape, x_train[:256], width_mode=args.width_mode,
                                   keep_width=tuple(args.keep_width or ()), **widths)
    task = ClassifierTask(x_train, y_train, x_val, y_val, proxy_fraction=args.proxy_fraction, seed=args.seed)
    if args.trials_only:
        from .search.runner import run_trials

        plan = run_trials(model, space, task, config)
        print(plan.to_json())
        return 0
    result = run_search(model, space, task, config, chance_accuracy=chance, notes=notes)
    print(json.dumps(result.summary(), indent=2) if args.json else
          format_summary(result) + "\n\n" + format_layer_table(result.layer_table))
    return 0


def _cmd_conformance(args: argparse.Namespace) -> int:
    from .conformance.runner import run_conformance
    from .conformance.vectors import default_vectors_dir

    folder = Path(args.dir) if args.dir else default_vectors_dir()
    passed = failed = 0
    rows = []
    for outcome in run_conformance(folder, args.decoder, args.only or ()):
        passed += outcome.passed
        failed += not outcome.passed
        v = outcome.vector
        rows.append({"name": v.name, "passed": outcome.passed, "detail": outcome.detail,
                     "expect": v.error or "decode"})
        if not args.json:
            print(f"{'PASS' if outcome.passed else 'FAIL'} {v.name:32s} {v.error or 'valid':24s} {outcome.detail}")
    if args.json:
        print(json.dumps({"passed": passed, "failed": failed, "vectors": rows}, indent=2))
    else:
        print(f"conformance: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nncodec", description="Encode, decode and inspect nncodec bitstreams.")
    p.add_argument("--version", action="version", version=f"nncodec {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    e = sub.add_parser("encode", help="encode a .pt / .safetensors / .npz file into a .nnc bitstream",
                       description="Encode tensors. Lossless unless --bits or --step is given.")
    e.add_argument("input", help="state_dict .pt (loaded with weights_only=True), .safetensors or .npz")
    e.add_argument("output", help="the .nnc file to write (atomically)")
    q = e.add_mutually_exclusive_group()
    q.add_argument("--bits", type=int, help="quantize float tensors to this many bits (1..16), per output channel")
    q.add_argument("--step", type=float, help="quantize float tensors with this step size")
    q.add_argument("--rel-step", type=float,
                   help="quantize with a step of REL_STEP x std per tensor (best rate for a given fidelity)")
    e.add_argument("--step-scale", action="append", metavar="PATTERN=FACTOR",
                   help="with --rel-step: multiply the step of matching tensors (repeatable)")
    e.add_argument("--step-scales", metavar="JSON",
                   help="with --rel-step: a JSON object of tensor name (or pattern) -> step factor, e.g. "
                        "from nncodec.calibrate_step_scales")
    e.add_argument("--bits-1d", type=int, default=16, help="bits for rank-1 float tensors (default 16)")
    e.add_argument("--dependent", action="store_true",
                   help="dependent (trellis-coded) quantization, format 1.5 (with --step or --rel-step)")
    e.add_argument("--lossless", action="append", metavar="PATTERN",
                   help="glob of tensor names kept exact when quantizing (repeatable)")
    e.add_argument("--level", type=int, default=3, help="zstd level, -7..22 (default 3)")
    e.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="store a metadata pair (repeatable)")
    e.add_argument("--no-group-tensors", action="store_true",
                   help="one unit per tensor, no tensor-group unit (a stream 1.0-1.3 decoders read)")
    e.add_argument("--no-adaptive-coding", action="store_true",
                   help="no adaptive arithmetic coding stage (acode, format 1.6): a stream 1.5 decoders read")
    e.add_argument("--json", action="store_true", help="print the per-tensor report as JSON")
    e.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    e.set_defaults(func=_cmd_encode)

    d = sub.add_parser("decode", help="decode a .nnc bitstream into .safetensors / .npz / .pt")
    d.add_argument("input")
    d.add_argument("output", help="output file; its extension picks the format")
    d.add_argument("-q", "--quiet", action="store_true")
    d.add_argument("--operating-point", type=int, default=None, metavar="K",
                   help="operating point of a scalable stream (default: its last, the full model)")
    d.set_defaults(func=_cmd_decode)

    i = sub.add_parser("info", help="list the units and tensors of a bitstream")
    i.add_argument("file")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_cmd_info)

    v = sub.add_parser("verify", help="check every checksum and decode every tensor")
    v.add_argument("file")
    v.set_defaults(func=_cmd_verify)

    en = sub.add_parser("energy", help="per-layer energy of a model under a quantization plan (QTools-compatible)",
                        description="Without --model: the seed's example CNN (conv16-conv32-conv64-dense10, 28x28x1) "
                                    "with 8-bit weights and quantized_relu(8) activations, or --reference int8,int16.")
    en.add_argument("--model", metavar="FILE.py:FUNCTION", help="your code: a function returning an nn.Module")
    en.add_argument("--weights", help="state_dict .pt for --model (loaded with weights_only=True)")
    en.add_argument("--input-shape", help="with --model: input shape without batch (default 1,28,28)")
    en.add_argument("--example", metavar="FILE.pt", help="example inputs for --model: a tensor or tuple of tensors "
                    "saved with torch.save (token ids, masks...), batch 1; replaces --input-shape")
    en.add_argument("--memory", action="store_true", help="print the memory report (peak activation memory, "
                    "best branch order)")
    en.add_argument("--accumulation-batches", type=int, default=1, help="with --memory: accumulate in K batches")
    en.add_argument("--conv-algorithm", choices=["direct", "winograd"], default="direct",
                    help="winograd: 3x3 stride-1 convs as F(2x2,3x3)")
    en.add_argument("--activation-sparsity", type=float, metavar="T",
                    help="skip MACs of zero inputs where the measured zero fraction is >= T (0..1)")
    en.add_argument("--plan", help="plan JSON (per-layer kernel/bias/activation quantizers)")
    en.add_argument("--reference", metavar="W,ACC", help="cost the reference model instead, e.g. int8,int16")
    en.add_argument("--mode", choices=["qtools", "corrected"], default="qtools")
    en.add_argument("--weights-memory", choices=["sram", "dram", "fixed"], default="sram")
    en.add_argument("--activations-memory", choices=["sram", "dram"], default="sram")
    en.add_argument("--min-sram-size", type=float, default=2 ** 27, help="bits (default 2**27)")
    en.add_argument("--io-traffic", action="store_true", help="model inputs/outputs travel through DRAM")
    en.add_argument("--sparsity-aware", action="store_true", help="zero weights skip their MACs and reads")
    en.add_argument("--op-costs", metavar="JSON", help="op-cost table for other hardware (polynomials)")
    en.add_argument("--json", action="store_true")
    en.add_argument("--plot", metavar="PNG", help="write a bar chart of per-layer energy")
    en.set_defaults(func=_cmd_energy)

    def search_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--controller", default="tpe", choices=SEARCH_CONTROLLERS)
        p.add_argument("--trials", type=int, help="trials (default 30, none with --timeout alone; the "
                                                   "differentiable controller runs none)")
        p.add_argument("--timeout", type=float, metavar="SECONDS",
                       help="wall-time budget of the trials (Optuna controllers; fine-tuning and encoding come "
                            "after it; no trial starts once it is spent); with --trials both bound the search")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", default="nncodec_demo", help="folder for the report, plan, plot and bitstream")
        p.add_argument("--storage", help="study storage: a SQLite file (default: OUT/search.db) or postgresql://...")
        p.add_argument("--json", action="store_true", help="print the summary as JSON")

    c = sub.add_parser("conformance", help="hold a decoder to the conformance vectors",
                       description="Decodes every vector of a manifest with nncodec's decoder, or with an external "
                                   "decoder command, and checks the results; exit 1 on any failure.")
    c.add_argument("dir", nargs="?", help="vectors folder with manifest.json (default: the bundled vectors)")
    c.add_argument("--decoder", metavar="'CMD {in} {out}'",
                   help="external decoder: writes {out} as .npz (one array per tensor); on bad input exits non-zero "
                        "with the error class name as the last line of stderr")
    c.add_argument("--only", action="append", metavar="GLOB", help="only the vectors whose name matches (repeatable)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_cmd_conformance)

    m = sub.add_parser("demo", help="the seed example end to end: train, search, prune, quantize, encode, decode",
                       description="Trains conv16-conv32-conv64-dense10 on MNIST-5k, searches quantizers and "
                                   "widths under the energy model, fine-tunes, encodes, decodes and re-measures.")
    search_options(m)
    m.set_defaults(func=_cmd_demo)

    se = sub.add_parser("search", help="search quantizers and widths for your model (no --model: the demo)",
                        description="Without --model this runs the demo. With --model FILE.py:FUNCTION and --data "
                                    "an .npz (x_train, y_train, x_val, y_val) it searches your classifier.")
    search_options(se)
    se.add_argument("--model", metavar="FILE.py:FUNCTION", help="your code: a function returning the reference")
    se.add_argument("--weights", help="trained state_dict .pt for --model (weights_only=True); without it the "
                                      "reference is trained first on x_train")
    se.add_argument("--reference-epochs", type=int, default=8,
                    help="epochs of reference training when no --weights is given (default 8)")
    se.add_argument("--data", help=".npz with x_train, y_train, x_val, y_val")
    se.add_argument("--input-shape", help="with --model: input shape without batch (default: x_train's, from "
                    "--data; given, it must match)")
    se.add_argument("--study-name", default="nncodec-search", help="workers sharing a storage join this study")
    se.add_argument("--proxy-epochs", type=int, default=1)
    se.add_argument("--proxy-fraction", type=float, default=0.5, help="fraction of the training set per trial")
    se.add_argument("--final-epochs", type=int, default=6)
    se.add_argument("--cost", choices=["energy", "size"], default="energy")
    se.add_argument("--size-score", nargs="?", const="{}", metavar="JSON",
                    help="also score the stored size (nonzero weights x bits vs the int8 reference): a second eq.-2 "
                         "factor; alone the seed's parameters, or e.g. '{\"p_smaller\": 4}'")
    se.add_argument("--max-drop", type=float, metavar="FRACTION",
                    help="largest accepted accuracy loss vs the reference (0.01: one point): trials under it rank "
                         "below every trial within it, the pick is within it when any trial is (else a warning)")
    se.add_argument("--finetune", nargs="?", const="{}", metavar="JSON",
                    help="final fine-tuning by distillation from the reference with a cosine learning rate; alone "
                         "the defaults (distill 0.5, T 4), or e.g. '{\"distill\": 0.7, \"proxy\": true}'")
    se.add_argument("--final-selection", type=float, default=0.0, metavar="FRACTION",
                    help="hold this fraction of x_train out of the final fine-tuning and keep the epoch that scores "
                         "best on it (default 0: the last epoch; x_val is never used to choose)")
    se.add_argument("--keep-final-norms", dest="final_norms", action="store_false",
                    help="leave the batch-norm statistics of the final fine-tuning as training left them (default: "
                         "re-estimated on x_train after every epoch)")
    se.add_argument("--final-recalibration", choices=["sequential", "one_pass"], default="sequential",
                    help="how the final fine-tuning re-estimates the batch-norm statistics: one norm at a time in "
                         "execution order (sequential, the default) or all in one pass (one_pass, faster)")
    se.add_argument("--width-importance", choices=["l1", "l2", "taylor"], default="l1",
                    help="which channels a narrowed layer keeps: largest weight norms (l1, l2) or largest "
                         "first-order Taylor scores of the cross-entropy on x_train (taylor)")
    se.add_argument("--initial-kernels", choices=["nearest", "gptq"], default="nearest",
                    help="gptq: each candidate's quantized kernels start from their data-aware (GPTQ) rounding on "
                         "its own layer inputs (x_train) instead of the nearest codes")
    se.add_argument("--max-energy-pj", type=float, help="hard cap: candidates over it are never trained")
    se.add_argument("--max-bits", type=float, help="hard cap on parameter bits")
    se.add_argument("--max-params", type=int, help="hard cap on the parameter count")
    se.add_argument("--block-search", action="store_true", help="search layer groups one after another")
    se.add_argument("--block-order", choices=["energy", "input"], default="energy")
    se.add_argument("--width-mode", choices=["layer", "block"], default="layer")
    se.add_argument("--keep-width", action="append", metavar="PATTERN", help="layers whose width stays")
    se.add_argument("--prune", type=float, default=0.0, help="magnitude-prune this fraction before fine-tuning")
    se.add_argument("--prune-relative", action="store_true",
                    help="rank --prune's magnitudes relative to each layer's RMS (nets with batch norms)")
    se.add_argument("--prune-epochs", type=int, default=0,
                    help="reach --prune over this many of the fine-tuning epochs (cubic schedule; 0: at once)")
    se.add_argument("--worker", type=int, default=0, help="index of this worker (different samplers per worker)")
    se.add_argument("--trials-only", action="store_true",
                    help="run trials and print the best plan (a worker joining a shared study)")
    se.add_argument("--schedule", choices=SEARCH_SCHEDULES, default="single",
                    help="iterative: compress a step further, retrain, decide again, until the caps hold")
    se.add_argument("--option", action="append", metavar="KEY=VALUE", default=[],
                    help="option of the differentiable / greedy controller or the iterative schedule (VALUE: JSON "
                         "or text), e.g. lambda=0.5, epochs=6, max_accuracy_drop=0.01, pipeline='[\"prune\"]'")
    se.add_argument("--codesign", action="store_true",
                    help="co-design the accelerator (SRAM size, placement, L blocks x C lanes) with the network")
    se.add_argument("--hardware", metavar="JSON", help="co-design grid and weights, e.g. '{\"rounds\": 4}'")
    se.set_defaults(func=_cmd_search)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        args = parser.parse_args(["demo"])
    try:
        return int(args.func(args))
    except _Failure as exc:
        message = str(exc)
    except NNCodecError as exc:
        message = _one_line(f"{type(exc).__name__}: {exc}")
    except OSError as exc:
        message = _one_line(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    print(f"nncodec: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
