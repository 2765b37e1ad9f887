"""Tiny valid ONNX models, hand-encoded as protobuf, for tests (no onnx package needed)."""

from __future__ import annotations

import random

__all__ = ["tiny_onnx_model"]

_LEN = 2
_UINT8 = 2  # TensorProto.DataType.UINT8
_IR_VERSION = 8
_OPSET = 17  # Add accepts uint8 since opset 14


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 fields: negative values as 64-bit two's complement
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _key_len(field: int, length: int) -> bytes:
    return _varint((field << 3) | _LEN) + _varint(length)


def _msg(field: int, payload: bytes) -> bytes:
    return _key_len(field, len(payload)) + payload


def _str(field: int, text: str) -> bytes:
    return _msg(field, text.encode())


def _value_info(name: str, length: int) -> bytes:
    dim = _int(1, length)  # Dimension.dim_value
    shape = _msg(1, dim)  # TensorShapeProto.dim
    tensor_type = _int(1, _UINT8) + _msg(2, shape)  # TypeProto.Tensor elem_type, shape
    type_proto = _msg(1, tensor_type)  # TypeProto.tensor_type
    return _str(1, name) + _msg(2, type_proto)  # ValueInfoProto name, type


def _tiny_onnx_parts(seed: int, padding: int) -> tuple[bytes, bytes]:
    """(head, tail): the model is head + the initializer's `padding` raw bytes + tail."""
    if padding < 0:
        raise ValueError("padding must be >= 0")
    # Y = Add(X, W): X is a uint8 input of shape [padding], W the initializer holding the padding.
    node = _str(1, "X") + _str(1, "W") + _str(2, "Y") + _str(3, f"add{seed}") + _str(4, "Add")
    tensor_head = (
        _int(1, padding)  # dims
        + _int(2, _UINT8)  # data_type
        + _str(8, "W")  # name
        + _key_len(9, padding)  # raw_data, its bytes follow
    )
    graph_head = (
        _msg(1, node)  # node
        + _str(2, f"tiny_seed_{seed}")  # name
        + _key_len(5, len(tensor_head) + padding)  # initializer
        + tensor_head
    )
    graph_tail = (
        _str(10, f"tiny ONNX model for tests, seed {seed}")  # doc_string
        + _msg(11, _value_info("X", padding))  # input
        + _msg(12, _value_info("Y", padding))  # output
    )
    model_head = (
        _int(1, _IR_VERSION)  # ir_version
        + _str(2, "modelfetch.testing")  # producer_name
        + _str(3, "1")  # producer_version
        + _int(5, seed)  # model_version
        + _key_len(7, len(graph_head) + padding + len(graph_tail))  # graph
        + graph_head
    )
    opset = _str(1, "") + _int(2, _OPSET)  # OperatorSetIdProto domain, version
    model_tail = graph_tail + _msg(8, opset)  # opset_import
    return model_head, model_tail


def tiny_onnx_model(seed: int = 0, *, padding: int = 0) -> bytes:
    """A valid ONNX model (ir_version 8, opset 17) computing Y = Add(X, W) on uint8 tensors.

    W is an initializer of `padding` pseudo-random bytes (derived from `seed`), so the file is
    `padding` bytes plus a few hundred; models of different seeds differ.
    """
    head, tail = _tiny_onnx_parts(seed, padding)
    return head + random.Random(seed).randbytes(padding) + tail
