"""Writes crates/mdm-models/tests/data/gguf/reference.gguf with the reference `gguf` Python package
(llama.cpp's gguf-py, from PyPI): metadata of every value type, and for F16, BF16, Q8_0, Q4_K, Q5_K
and Q6_K a tensor of that type next to `<name>.dequantized`, the package's own dequantization of it
as F32. The quantized tensors are random blocks (every bit pattern, finite f16 scales) and, for
Q8_0 and BF16, also the package's quantization of normal weights.

    python3 -m venv /tmp/gg && /tmp/gg/bin/pip install gguf numpy
    /tmp/gg/bin/python scripts/gguf_fixture.py crates/mdm-models/tests/data/gguf/reference.gguf
"""
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

out = sys.argv[1]
rng = np.random.default_rng(20261204)
w = gguf.GGUFWriter(out, "llama")
w.add_uint8("test.u8", 200)
w.add_int8("test.i8", -7)
w.add_uint16("test.u16", 60000)
w.add_int16("test.i16", -30000)
w.add_uint32("test.u32", 4000000000)
w.add_int32("test.i32", -2000000000)
w.add_float32("test.f32", 0.125)
w.add_bool("test.bool", True)
w.add_string("test.string", "diffusion ✓")
w.add_array("test.array", [1, 2, 3])
w.add_array("test.strings", ["a", "bc"])
w.add_uint64("test.u64", 2**40)
w.add_int64("test.i64", -(2**40))
w.add_float64("test.f64", -1.5)

# byte offsets of the f16 scale fields in one block of each type
SCALES = {T.Q8_0: [0], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}
for qt, name in [(T.Q8_0, "q8_0"), (T.Q4_K, "q4_k"), (T.Q5_K, "q5_k"), (T.Q6_K, "q6_k")]:
    block, size = gguf.GGML_QUANT_SIZES[qt]
    rows, blocks_per_row = 3, 2
    raw = rng.integers(0, 256, size=(rows, blocks_per_row, size), dtype=np.uint8)
    for at in SCALES[qt]:
        scale = (rng.normal(size=(rows, blocks_per_row)) * 0.01).astype(np.float16)
        raw[:, :, at:at + 2] = scale.view(np.uint8).reshape(rows, blocks_per_row, 2)
    raw = raw.reshape(rows, blocks_per_row * size)
    w.add_tensor(name, raw, raw_dtype=qt)
    w.add_tensor(name + ".dequantized", dequantize(raw, qt).astype(np.float32))

weights = rng.normal(size=(4, 64)).astype(np.float32)
for qt, name in [(T.Q8_0, "q8_0.real"), (T.BF16, "bf16")]:
    q = quantize(weights, qt)
    w.add_tensor(name, q, raw_dtype=qt)
    w.add_tensor(name + ".dequantized", dequantize(q, qt).astype(np.float32))
w.add_tensor("f16", weights.astype(np.float16))
w.add_tensor("f16.dequantized", weights.astype(np.float16).astype(np.float32))
w.add_tensor("f32", weights)

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(out)
