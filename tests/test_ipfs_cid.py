"""Tests for modelfetch.ipfs.cid: CID parsing, printing and block verification."""

from __future__ import annotations

import doctest
import hashlib
import importlib

import pytest
from multiformats import CID as MultiformatsCID

from modelfetch.errors import BadBlock
from modelfetch.ipfs.cid import (
    DAG_PB,
    RAW,
    SHA2_256,
    Cid,
    decode_varint,
    encode_varint,
    make_cid,
    verify_block,
)

KNOWN = [
    "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH",
    "bafybeif7ztnhq65lumvvtr4ekcwd2ifwgm3awq4zfr3srh462rwyinlb4y",
    "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
    "bafkqaaa",
    "bafybeidbclfqleg2uojchspzd4bob56dqetqjsj27gy2cq3klkkgxtpn4i",
]


@pytest.mark.parametrize("text", KNOWN)
def test_round_trip_and_agreement_with_multiformats(text: str) -> None:
    cid = Cid.parse(text)
    assert str(cid) == text
    assert Cid.parse(bytes(cid)) == cid
    reference = MultiformatsCID.decode(text)
    assert bytes(cid) == bytes(reference)
    assert cid.version == reference.version
    assert cid.codec == reference.codec.code


def test_other_multibases_parse_to_the_same_cid() -> None:
    v1 = Cid.parse("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku")
    for base in ("base58btc", "base16", "base36", "base64"):
        text = MultiformatsCID.decode(str(v1)).encode(base)
        assert Cid.parse(text) == v1, base
    js_ipfs_text = "zb2rhmy65F3REf8SZp7De11gxtECBGgUKaLdiDj7MCGCHxbDW"  # what js-ipfs prints
    assert Cid.parse(js_ipfs_text) == v1


def test_v0_v1_conversion() -> None:
    v0 = Cid.parse("QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH")
    assert str(v0.to_v1()) == "bafybeif7ztnhq65lumvvtr4ekcwd2ifwgm3awq4zfr3srh462rwyinlb4y"
    assert v0 != v0.to_v1()
    assert v0.codec_name == "dag-pb"


@pytest.mark.parametrize("bad", ["", "Qm123", "bafy!!!", "x-not-a-cid"])
def test_bad_text_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        Cid.parse(bad)


def test_cidv0_must_be_dag_pb_sha256() -> None:
    with pytest.raises(ValueError):
        Cid(0, RAW, SHA2_256, b"\0" * 32)


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 2**32, 2**63 - 1])
def test_varint_round_trip(n: int) -> None:
    raw = encode_varint(n)
    assert decode_varint(raw) == (n, len(raw))


def test_varint_rejects_truncated_and_non_minimal() -> None:
    with pytest.raises(ValueError):
        decode_varint(b"\x80")
    with pytest.raises(ValueError):
        decode_varint(b"\x80\x00")


def test_verify_block_sha256() -> None:
    data = b"hello world\n"
    cid = make_cid(1, RAW, data)
    assert str(cid) == "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
    verify_block(cid, data)
    verify_block(str(cid), bytearray(data))
    with pytest.raises(BadBlock, match="hash to"):
        verify_block(cid, b"hello world!")


def test_verify_block_identity() -> None:
    verify_block("bafkqaaa", b"")
    inline = Cid(1, RAW, 0x00, b"hi")
    verify_block(inline, b"hi")
    with pytest.raises(BadBlock, match="identity"):
        verify_block(inline, b"ho")


def test_verify_block_other_hashes_and_unsupported() -> None:
    data = b"abc"
    verify_block(Cid(1, RAW, 0x13, hashlib.sha512(data).digest()), data)
    verify_block(Cid(1, RAW, 0xB220, hashlib.blake2b(data, digest_size=32).digest()), data)
    with pytest.raises(BadBlock, match="unsupported multihash"):
        verify_block(Cid(1, RAW, 0x1B, b"\0" * 32), data)  # keccak-256
    with pytest.raises(BadBlock, match="digest of 31 bytes"):
        verify_block(Cid(1, DAG_PB, SHA2_256, b"\0" * 31), data)


@pytest.mark.parametrize("module", ["cid", "importer", "car", "unixfs", "dagfile", "blockstore"])
def test_docstring_examples(module: str) -> None:
    mod = importlib.import_module(f"modelfetch.ipfs.{module}")
    failed, _ = doctest.testmod(mod)
    assert failed == 0
