import subprocess
import sys

import nncodec
from nncodec.bitstream import constants as c


def test_public_names_are_pinned():
    assert sorted(nncodec.__all__) == sorted([
        "__version__", "encode", "encode_with_report", "decode", "load_into", "load_model", "open", "save", "load",
        "calibrate_step_scales", "encode_arrays",
        "decode_arrays", "iter_tensors", "read_info", "Encoder", "EncodeReport", "TensorReport", "Limits",
        "DEFAULT_LIMITS", "NNCodecError", "FormatError", "BadMagicError", "UnsupportedVersionError",
        "TruncatedError", "CorruptError", "ChecksumError", "UnknownUnitError", "UnsupportedFeatureError",
        "LimitExceededError", "ConfigError", "StreamInfo", "UnitInfo", "StreamFile", "TensorHeader"])
    for name in nncodec.__all__:
        assert hasattr(nncodec, name)


def test_import_stays_light():
    code = "import sys, nncodec; nncodec.decode_arrays(nncodec.encode({'a': __import__('numpy').ones(3)})); " \
           "print(sorted(m for m in ('torch', 'optuna', 'matplotlib', 'tqdm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_format_constants_match_the_spec_tables():
    assert c.MAGIC == b"\x89NNC\r\n\x1a\n" and (c.FORMAT_MAJOR, c.FORMAT_MINOR) == (1, 0)
    assert c.FILE_HEADER.size == 12 and c.UNIT_HEADER.size == 16 and c.UNIT_CRC_COVERED == 12
    assert c.STREAM_HEADER.size == 16 and c.END_OF_STREAM.size == 8 and c.QUANT_DESCRIPTOR.size == 14
    assert (c.UNIT_STREAM_HEADER, c.UNIT_MODEL_PARAMETER_SET, c.UNIT_TOPOLOGY, c.UNIT_TENSOR_ALIASES, c.UNIT_TENSOR,
            c.UNIT_END) == (0x01, 0x02, 0x03, 0x04, 0x10, 0x7F)
    assert c.FORMAT_MINOR_ALIASES == 1
    assert c.SCHEME_NAMES == {0: "none", 1: "uniform", 2: "binary", 3: "modified_binary", 4: "ternary", 5: "po2",
                              6: "float_cast"}
    assert (c.STAGE_ZERO_WORDS, c.STAGE_BITPACK, c.STAGE_SHUFFLE, c.STAGE_ZSTD, c.STAGE_ANS) == (1, 2, 3, 4, 5)


def test_the_worked_hex_example_in_the_spec_is_what_the_encoder_writes():
    import re
    from pathlib import Path

    import numpy as np

    import nncodec

    spec = (Path(__file__).resolve().parents[2] / "FORMAT.md").read_text(encoding="utf-8")
    section = spec.split("## 8. A worked example", 1)[1].split("## 9.", 1)[0]
    hex_bytes = []
    for line in section.splitlines():
        m = re.match(r"^([0-9a-f]{4}): ((?:[0-9a-f]{2} )*[0-9a-f]{2})", line)
        if m:
            assert int(m.group(1), 16) == len(hex_bytes)  # offsets in the spec are right
            hex_bytes += [int(b, 16) for b in m.group(2).split()]
    data = nncodec.encode_arrays({"w": np.array([[3, 0], [0, -2]], np.int8)},
                                 pipeline=[{"id": "zero_words", "word_size": 1}])
    assert bytes(hex_bytes) == data
    np.testing.assert_array_equal(nncodec.decode_arrays(bytes(hex_bytes))["w"], [[3, 0], [0, -2]])


def test_the_facade_returns_only_types_it_exports():
    import numpy as np

    data = nncodec.encode({"a": np.ones(3, np.float32)})
    assert isinstance(nncodec.read_info(data), nncodec.StreamInfo)
    assert isinstance(nncodec.read_info(data).units[0], nncodec.UnitInfo)
    with nncodec.open(data) as f:
        assert isinstance(f, nncodec.StreamFile) and isinstance(f.header("a"), nncodec.TensorHeader)
    assert all(isinstance(th, nncodec.TensorHeader) for th, _ in nncodec.iter_tensors(data))


def _imports_of(path):
    """Modules a source file imports, as absolute ``nncodec...`` names (relative imports resolved)."""
    import ast
    from pathlib import Path

    root = Path(nncodec.__file__).parent
    package = ["nncodec", *path.parent.relative_to(root).parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            found.add(".".join([*base, *(node.module.split(".") if node.module else [])]))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("nncodec")}


def test_layers_import_only_downwards():
    """The wire layer (bitstream) imports nothing above it; the stages (coding) only the wire layer; the
    quantizers' export does not reach up into the encoder."""
    from pathlib import Path

    root = Path(nncodec.__file__).parent
    foundation = {"nncodec.errors", "nncodec.limits", "nncodec.dtypes", "nncodec.checks"}
    for layer, allowed in (("bitstream", {"nncodec.bitstream"}), ("coding", {"nncodec.bitstream", "nncodec.coding"})):
        for path in (root / layer).glob("*.py"):
            bad = {m for m in _imports_of(path) if m not in foundation
                   and not any(m == a or m.startswith(a + ".") for a in allowed)}
            assert not bad, f"{path.name} imports {bad}"
    assert not {m for m in _imports_of(root / "quant" / "export.py")
                if m.startswith(("nncodec.encoder", "nncodec.decoder", "nncodec.torch_io"))}
