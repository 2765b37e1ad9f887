"""The cheap ONNX structure check (stream and file) and the hand-encoded tiny test model."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from modelfetch import onnxcheck
from modelfetch.errors import NotONNX, VerificationError
from modelfetch.onnxcheck import MAX_IR_VERSION, OnnxStreamCheck, check_onnx_file
from modelfetch.testing.onnx import tiny_onnx_model

MiB = 1 << 20
BIG_PADDING = 5_000_000
SEEDS = [0, 1, 2, 42]


# -- helpers ----------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _len_field(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


OPSET = _len_field(8, _len_field(1, b"") + _key(2, 0) + _varint(17))
IR8 = _key(1, 0) + _varint(8)


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def stream(data: bytes, size: int | None = None) -> None:
    check = OnnxStreamCheck()
    for piece in chunks(data, size or max(len(data), 1)):
        check.update(piece)
    check.finish()


def stream_reason(data: bytes, size: int | None = None) -> str:
    with pytest.raises(NotONNX) as info:
        stream(data, size)
    return str(info.value)


def file_reason(data: bytes, path: Path) -> str:
    path.write_bytes(data)
    with pytest.raises(NotONNX) as info:
        check_onnx_file(path)
    return str(info.value)


def _without_hint(reason: str) -> str:
    return re.sub(r" \(the data starts with .*\)$", "", reason)


def reject(data: bytes, path: Path) -> str:
    """Both entry points reject `data` with the same reason, whatever the chunking."""
    reason = stream_reason(data)
    assert file_reason(data, path) == reason
    for size in (1, 3, 7, 4096) if len(data) < 100_000 else (7919, MiB):
        chunked = stream_reason(data, size)
        if size < 32:  # what the data looks like is told from the bytes seen when it failed
            assert _without_hint(chunked) == _without_hint(reason), size
        else:
            assert chunked == reason, size
    return reason


@pytest.fixture(scope="module")
def big_model() -> bytes:
    return tiny_onnx_model(3, padding=BIG_PADDING)


@pytest.fixture(scope="module")
def small_model() -> bytes:
    return tiny_onnx_model(5, padding=300)


# -- (a) the hand-encoded tiny model is a real ONNX model ---------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_tiny_model_is_valid_onnx(seed: int) -> None:
    data = tiny_onnx_model(seed, padding=seed * 10)
    model = onnx.load_model_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert [n.op_type for n in model.graph.node] == ["Add"]
    assert len(model.graph.initializer[0].raw_data) == seed * 10
    # canonical encoding: exactly what onnx itself writes for this model
    assert model.SerializeToString() == data


def test_tiny_model_with_big_padding_is_valid_onnx(big_model: bytes) -> None:
    model = onnx.load_model_from_string(big_model)
    onnx.checker.check_model(model, full_check=True)
    assert len(model.graph.initializer[0].raw_data) == BIG_PADDING
    assert BIG_PADDING < len(big_model) < BIG_PADDING + 400
    assert model.SerializeToString() == big_model


def test_tiny_model_computes_add() -> None:
    data = tiny_onnx_model(9, padding=64)
    model = onnx.load_model_from_string(data)
    w = numpy_helper.to_array(model.graph.initializer[0])
    x = np.arange(64, dtype=np.uint8)
    (y,) = ReferenceEvaluator(model).run(None, {"X": x})
    assert np.array_equal(y, x + w)


def test_tiny_models_are_distinct_per_seed_and_deterministic() -> None:
    for padding in (0, 64):
        models = [tiny_onnx_model(seed, padding=padding) for seed in range(10)]
        assert len(set(models)) == 10
        assert models == [tiny_onnx_model(seed, padding=padding) for seed in range(10)]
    # the bulk differs too (no dedup between seeds) and is not constant
    weights = {
        onnx.load_model_from_string(tiny_onnx_model(seed, padding=4096))
        .graph.initializer[0]
        .raw_data
        for seed in range(10)
    }
    assert len(weights) == 10
    assert all(len(set(w)) > 200 for w in weights)


def test_tiny_model_refuses_negative_padding() -> None:
    with pytest.raises(ValueError):
        tiny_onnx_model(padding=-1)


# -- (b) both entry points accept it --------------------------------------------------------


@pytest.mark.parametrize("size", [7, 4096, MiB])
def test_stream_accepts_big_model_in_chunks(big_model: bytes, size: int) -> None:
    stream(big_model, size)


def test_stream_accepts_one_byte_chunks() -> None:
    data = tiny_onnx_model(1, padding=200_000)
    check = OnnxStreamCheck()
    view = memoryview(data)
    for i in range(len(data)):
        check.update(view[i : i + 1])
    check.finish()


def test_stream_accepts_every_split_point(small_model: bytes) -> None:
    for cut in range(len(small_model) + 1):
        check = OnnxStreamCheck()
        check.update(small_model[:cut])
        check.update(b"")
        check.update(bytearray(small_model[cut:]))
        check.finish()


def test_stream_accepts_random_chunking(big_model: bytes) -> None:
    rng = random.Random(1)
    data = memoryview(big_model)
    for _ in range(5):
        check = OnnxStreamCheck()
        pos = 0
        while pos < len(data):
            size = rng.choice([1, 2, 5, 17, 300, 65_536, 1_000_003])
            check.update(data[pos : pos + size])
            pos += size
        check.finish()


@pytest.mark.parametrize("seed", SEEDS)
def test_both_accept_tiny_models(tmp_path: Path, seed: int) -> None:
    data = tiny_onnx_model(seed, padding=seed * 1000)
    stream(data)
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    check_onnx_file(path)
    check_onnx_file(str(path))


def test_file_accepts_big_model(tmp_path: Path, big_model: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(big_model)
    check_onnx_file(path)


def test_file_check_reads_only_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tiny_onnx_model(4, padding=32 * MiB)
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    read = [0]

    class Counting:
        def __init__(self, f: Any) -> None:
            self._f = f

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self._f.close()

        def read(self, n: int) -> bytes:
            block: bytes = self._f.read(n)
            read[0] += len(block)
            return block

        def __getattr__(self, name: str) -> Any:
            return getattr(self._f, name)

    def counting_open(*args: Any, **kwargs: Any) -> Counting:
        return Counting(open(*args, **kwargs))

    monkeypatch.setattr(onnxcheck, "open", counting_open, raising=False)
    check_onnx_file(path)
    assert 0 < read[0] < 256 * 1024
    # and the truncated file is still caught without reading it
    path.write_bytes(data[: 20 * MiB])
    read[0] = 0
    with pytest.raises(NotONNX, match=r"truncated inside field 7 \(graph\) > field 5"):
        check_onnx_file(path)
    assert read[0] < 256 * 1024


def test_stream_passes_over_big_fields_in_constant_time_per_chunk() -> None:
    """A 1 GiB stream in 1 MiB chunks: per-byte work would take minutes, not milliseconds."""
    total = 1 << 30
    node_len = total - 64  # one huge graph field; its exact content is never looked at
    graph = _key(1, 2) + _varint(node_len)
    head = IR8 + _key(7, 2) + _varint(len(graph) + node_len) + graph
    tail = OPSET
    filler = bytes(MiB)
    check = OnnxStreamCheck()
    start = time.perf_counter()
    check.update(head)
    left = node_len
    while left:
        piece = filler if left >= MiB else filler[:left]
        check.update(piece)
        left -= len(piece)
    check.update(tail)
    check.finish()
    assert time.perf_counter() - start < 2.0


# -- (c) a real model written by onnx -------------------------------------------------------


def _real_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((1024, 1024), dtype=np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(1024, dtype=np.float32), "B")
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, 1024])
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["XW"], name="matmul"),
        helper.make_node("Add", ["XW", "B"], ["XWB"], name="add"),
        helper.make_node("Relu", ["XWB"], ["R"], name="relu"),
        helper.make_node("Reshape", ["R", "shape"], ["Y"], name="reshape"),
    ]
    graph = helper.make_graph(
        nodes,
        "dense",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1024])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 1024])],
        initializer=[weight, bias, shape],
        doc_string="a dense layer",
        value_info=[helper.make_tensor_value_info("R", TensorProto.FLOAT, [1, 1024])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
        producer_name="modelfetch-tests",
        producer_version="1.0",
        doc_string="real model",
        domain="test.modelfetch",
        model_version=3,
    )
    model.ir_version = 8
    helper.set_model_props(model, {"license": "MIT", "author": "tests"})
    onnx.checker.check_model(model, full_check=True)
    return model


def test_real_onnx_model_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "real.onnx"
    onnx.save(_real_model(), path)
    data = path.read_bytes()
    assert len(data) > 4 * MiB
    check_onnx_file(path)
    for size in (7, 4096, MiB, len(data)):
        stream(data, size)


def test_real_onnx_model_with_external_data_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save(_real_model(), path, save_as_external_data=True, location="ext.onnx.data")
    assert path.stat().st_size < 64 * 1024
    check_onnx_file(path)


def test_graph_with_many_fields_of_varied_sizes_is_accepted(tmp_path: Path) -> None:
    """Graph fields of 1-, 2- and 3-byte lengths, in any order, split at any chunk boundary."""
    rng = random.Random(7)
    nodes = []
    for i in range(300):
        doc = "d" * rng.choice([0, 5, 100, 127, 128, 200, 1000, 16_383, 16_384, 20_000])
        nodes.append(helper.make_node("Identity", [f"v{i}"], [f"v{i + 1}"], doc_string=doc))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("v0", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("v300", TensorProto.FLOAT, [2])],
        doc_string="g" * 300,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    for size in (1, 7, 129, 4096, 16_385, MiB):
        stream(data, size)
    path = tmp_path / "chain.onnx"
    path.write_bytes(data)
    check_onnx_file(path)
    # the same graph cut short anywhere is still caught
    for cut in rng.sample(range(1, len(data)), 200):
        assert stream_reason(data[:cut], rng.choice([4096, 65_537])).startswith("truncated")


def test_unknown_fields_are_tolerated_like_protobuf_does(small_model: bytes) -> None:
    extra = _len_field(1000, b"future") + _key(999, 0) + _varint(5) + _key(998, 5) + b"abcd"
    data = small_model + extra
    onnx.load_model_from_string(data)  # protobuf accepts it too
    stream(data, 3)


def test_old_ir_version_needs_no_opset_import(small_model: bytes) -> None:
    model = onnx.load_model_from_string(small_model)
    model.ir_version = 2
    del model.opset_import[:]
    stream(model.SerializeToString())


# -- (d) rejections, with a reason ----------------------------------------------------------


def test_rejects_empty(tmp_path: Path) -> None:
    assert reject(b"", tmp_path / "f") == "empty file"


def test_rejects_html_page_at_first_chunk(tmp_path: Path) -> None:
    page = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head></html>\n"
    reason = reject(page, tmp_path / "f")
    assert re.search(r"wire type \d .*at byte 0 .*HTML", reason), reason
    check = OnnxStreamCheck()
    with pytest.raises(NotONNX):  # no need to wait for the end of the download
        check.update(page)


def test_rejects_json(tmp_path: Path) -> None:
    reason = reject(b'{"error": "Repository not found"}', tmp_path / "f")
    assert "at byte 0" in reason and "JSON" in reason, reason
    assert "JSON" in reject(b"  [1, 2, 3]\n", tmp_path / "f")


def test_rejects_git_lfs_pointer(tmp_path: Path) -> None:
    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:ab12\nsize 1234\n"
    assert "Git LFS pointer" in reject(pointer, tmp_path / "f")


def test_rejects_random_bytes(tmp_path: Path) -> None:
    rng = random.Random(20240501)
    samples = [rng.randbytes(rng.randrange(1, 300)) for _ in range(2000)]
    samples += [rng.randbytes(64 * 1024) for _ in range(20)]
    # random data behind a plausible ONNX start must fail too
    samples += [IR8 + rng.randbytes(rng.randrange(1, 300)) for _ in range(500)]
    for data in samples:
        assert stream_reason(data)
    for data in samples[::50]:
        assert reject(data, tmp_path / "f")


def test_never_rejects_what_onnx_accepts_except_mistyped_known_fields() -> None:
    """Randomly damaged models: whatever onnx loads and checks, the cheap check accepts too,
    except known fields with the wrong wire type (protobuf keeps those as unknown fields)."""
    rng = random.Random(3)
    base = tiny_onnx_model(5, padding=40)
    accepted_by_onnx = 0
    for _ in range(3000):
        data = bytearray(base)
        for _ in range(rng.choice([1, 1, 2])):
            k = rng.randrange(len(data))
            op = rng.random()
            if op < 0.5:
                data[k] ^= 1 << rng.randrange(8)
            elif op < 0.75:
                del data[k]
            else:
                data.insert(k, rng.randrange(256))
        try:
            onnx.checker.check_model(onnx.load_model_from_string(bytes(data)))
        except Exception:
            continue
        accepted_by_onnx += 1
        try:
            stream(bytes(data))
        except NotONNX as exc:
            assert "has wire type" in str(exc), (bytes(data), exc)
    assert accepted_by_onnx > 300


def test_rejects_every_proper_prefix(tmp_path: Path, small_model: bytes) -> None:
    path = tmp_path / "f"
    for cut in range(len(small_model)):
        prefix = small_model[:cut]
        reason = stream_reason(prefix)
        assert re.match(r"empty file|truncated|no graph field|no opset_import field", reason), (
            cut,
            reason,
        )
        assert file_reason(prefix, path) == reason
        assert stream_reason(prefix, 1) == reason


def test_rejects_truncated_big_model(tmp_path: Path, big_model: bytes) -> None:
    n = len(big_model)
    for cut in (1, 17, 200, n // 3, n // 2, n - 250, n - 100, n - 1):
        reason = reject(big_model[:cut], tmp_path / "f")
        assert reason.startswith("truncated"), (cut, reason)
        assert f"at byte {cut}" in reason
    reason = stream_reason(big_model[: n // 2])
    assert reason == (
        f"truncated inside field 7 (graph) > field 5 (initializer) at byte {n // 2}: "
        f"the field runs to byte {_initializer_end(big_model)}"
    )


def _initializer_end(data: bytes) -> int:
    model = onnx.load_model_from_string(data)
    init = model.graph.initializer[0].SerializeToString()
    return data.index(init) + len(init)


@pytest.mark.parametrize(
    "garbage",
    [b"\x00", b"garbage", b"<html></html>", bytes(4096), b"\xff", b"\x80\x80", b"\x3a\x05ab"],
)
def test_rejects_trailing_garbage(tmp_path: Path, small_model: bytes, garbage: bytes) -> None:
    reason = reject(small_model + garbage, tmp_path / "f")
    where = re.search(r"at byte (\d+)", reason)
    assert where and int(where.group(1)) >= len(small_model), reason


def test_rejects_protobuf_without_graph(tmp_path: Path) -> None:
    model = onnx.ModelProto(ir_version=8, producer_name="x")
    model.opset_import.append(helper.make_opsetid("", 17))
    data = model.SerializeToString()
    assert reject(data, tmp_path / "f") == f"no graph field (field 7) in {len(data)} bytes"


def test_rejects_model_without_ir_version(tmp_path: Path, small_model: bytes) -> None:
    model = onnx.load_model_from_string(small_model)
    model.ClearField("ir_version")
    assert reject(model.SerializeToString(), tmp_path / "f").startswith("no ir_version field")


@pytest.mark.parametrize("ir_version", [0, MAX_IR_VERSION + 1, 1 << 40])
def test_rejects_implausible_ir_version(tmp_path: Path, ir_version: int) -> None:
    data = _key(1, 0) + _varint(ir_version) + _len_field(7, b"") + OPSET
    assert f"implausible ir_version {ir_version} at byte 0" in reject(data, tmp_path / "f")


def test_rejects_model_without_opset_import(tmp_path: Path, small_model: bytes) -> None:
    model = onnx.load_model_from_string(small_model)
    del model.opset_import[:]
    assert reject(model.SerializeToString(), tmp_path / "f").startswith("no opset_import field")


def test_rejects_other_onnx_messages(tmp_path: Path, small_model: bytes) -> None:
    model = onnx.load_model_from_string(small_model)
    tensor = numpy_helper.from_array(np.ones((2, 3), dtype=np.float32), "t")
    for message in (model.graph, model.graph.node[0], tensor, model.opset_import[0]):
        reason = reject(message.SerializeToString(), tmp_path / "f")
        assert re.search(r"wire type|no ir_version|no graph", reason), (message, reason)


def test_rejects_wrong_wire_type_for_known_field(tmp_path: Path) -> None:
    data = IR8 + _key(7, 0) + _varint(1) + OPSET
    assert reject(data, tmp_path / "f") == (
        "field 7 (graph) at byte 2 has wire type 0 (varint), expected 2 (length-delimited)"
    )


def test_rejects_garbage_inside_graph(tmp_path: Path) -> None:
    data = IR8 + _len_field(7, b"<html>not a graph</html>") + OPSET
    reason = reject(data, tmp_path / "f")
    assert reason.startswith("inside field 7 (graph): ") and "at byte 4" in reason, reason


def test_rejects_graph_field_running_past_graph(tmp_path: Path) -> None:
    data = IR8 + _len_field(7, _key(1, 2) + _varint(50) + b"abc") + OPSET
    reason = reject(data, tmp_path / "f")
    assert "field 1 (node) at byte 4 runs to byte 56, past the end of the graph" in reason


def test_rejects_overlong_varint(tmp_path: Path) -> None:
    reason = reject(IR8 + b"\xff" * 11 + b"\x01", tmp_path / "f")
    assert reason == "not a protobuf: varint longer than 10 bytes at byte 2"


def test_rejects_length_over_protobuf_limit(tmp_path: Path) -> None:
    data = IR8 + _key(6, 2) + _varint(1 << 31) + b"doc"
    assert "over the 2 GiB protobuf limit" in reject(data, tmp_path / "f")


def test_rejects_groups_and_field_zero(tmp_path: Path) -> None:
    assert "wire type 3 (start group" in reject(IR8 + _key(9, 3), tmp_path / "f")
    assert "field number 0 at byte 2" in reject(IR8 + b"\x02\x00", tmp_path / "f")


def test_errors_are_sticky_and_are_verification_errors() -> None:
    check = OnnxStreamCheck()
    with pytest.raises(NotONNX) as first:
        check.update(b"<html>")
    assert isinstance(first.value, VerificationError)
    with pytest.raises(NotONNX, match="wire type"):
        check.update(tiny_onnx_model())
    with pytest.raises(NotONNX, match="wire type"):
        check.finish()


def test_finish_does_not_change_the_state(small_model: bytes) -> None:
    check = OnnxStreamCheck()
    check.update(small_model[:100])
    with pytest.raises(NotONNX, match="truncated"):
        check.finish()
    check.update(small_model[100:])
    check.finish()
    check.finish()


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        check_onnx_file(tmp_path / "missing.onnx")
