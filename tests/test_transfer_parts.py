"""The transfer's parts on their own: the piece plan, the control file, in-order hashing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest

from modelfetch.errors import HashMismatch
from modelfetch.hashes import Digests, Identity
from modelfetch.transfer import PartialFile, Plan, Span, Spans
from modelfetch.transfer.assemble import Assembler

MiB = 1 << 20


# -- the plan ------------------------------------------------------------------------------


def test_a_small_file_is_one_piece_a_large_one_is_cut_evenly() -> None:
    small = Plan(15 * MiB, connections=8, min_segment=8 * MiB, min_steal=MiB)
    assert [(p.start, p.end) for p in small.pieces] == [(0, 15 * MiB)]
    large = Plan(1024 * MiB, connections=8, min_segment=8 * MiB, min_steal=MiB)
    sizes = {p.end - p.start for p in large.pieces}
    assert large.initial_pieces() == 8 and sizes == {128 * MiB}
    assert large.pieces[0].start == 0 and large.pieces[-1].end == 1024 * MiB
    middling = Plan(20 * MiB, connections=8, min_segment=8 * MiB, min_steal=MiB)
    assert middling.initial_pieces() == 2  # every first piece holds at least min_segment


def test_a_resumed_plan_covers_only_the_gaps() -> None:
    plan = Plan(
        100 * MiB,
        connections=4,
        min_segment=8 * MiB,
        min_steal=MiB,
        done=[(0, 30 * MiB), (50 * MiB, 60 * MiB)],
    )
    covered = sorted((p.start, p.end) for p in plan.pieces)
    assert covered[0][0] == 30 * MiB and covered[-1][1] == 100 * MiB
    assert all(not (s < 60 * MiB and e > 50 * MiB) for s, e in covered)
    assert plan.missing == 60 * MiB


def test_a_finished_connection_steals_half_of_the_slowest_piece() -> None:
    plan = Plan(64 * MiB, connections=2, min_segment=8 * MiB, min_steal=MiB)
    fast, slow, third = object(), object(), object()
    a = plan.take(fast)
    b = plan.take(slow)
    assert a is not None and b is not None
    a.pos = a.end  # the fast connection finished its piece
    b.pos = b.start + 2 * MiB  # the slow one is 2 MiB in
    stolen = plan.take(fast, {fast: 100e6, slow: 1e6})
    assert stolen is not None and stolen.owner is fast
    assert stolen.end == 64 * MiB and b.end == stolen.start
    assert stolen.start == b.pos + (64 * MiB - (b.pos)) // 2
    # pieces are never cut below 2 x min_steal
    b.pos = b.end - MiB
    stolen.pos = stolen.end - MiB
    assert plan.take(third, {}) is None


def test_a_released_piece_is_taken_by_the_next_connection() -> None:
    plan = Plan(8 * MiB, connections=1, min_segment=8 * MiB, min_steal=MiB)
    first, second = object(), object()
    piece = plan.take(first)
    assert piece is not None
    piece.pos += 3 * MiB
    plan.release(piece)
    again = plan.take(second)
    assert again is piece and again.owner is second and again.pos == 3 * MiB


# -- spans and the control file ---------------------------------------------------------------


def test_spans_merge_by_origin_and_forget_ranges() -> None:
    spans = Spans()
    spans.add(0, 10, "a")
    spans.add(10, 20, "a")
    spans.add(30, 40, "b")
    spans.add(20, 30, "b")
    assert [(s.start, s.end, s.origin) for s in spans] == [(0, 20, "a"), (20, 40, "b")]
    assert spans.contiguous_from(0) == 40 and spans.contiguous_from(5) == 40
    spans.remove(15, 25)
    assert spans.contiguous_from(0) == 15 and spans.total == 30
    assert spans.by_origin() == {"a": [(0, 15)], "b": [(25, 40)]}


def identity(data: bytes) -> Identity:
    return Identity(len(data), hashlib.sha256(data).hexdigest(), evidence="manifest")


def test_the_control_file_round_trips_and_refuses_other_content(tmp_path: Path) -> None:
    data = os.urandom(4096)
    partial = PartialFile(tmp_path / "f.part", tmp_path / "f.json", "m/f")
    partial.begin(identity(data))
    fd = partial.open(len(data))
    os.pwrite(fd, data[:1000], 0)
    os.pwrite(fd, data[2000:3000], 2000)
    os.close(fd)
    partial.save(identity(data), Spans([Span(0, 1000, "gw"), Span(2000, 3000, "hub")]))
    kept = partial.resume(identity(data))
    assert [(s.start, s.end, s.origin) for s in kept] == [(0, 1000, "gw"), (2000, 3000, "hub")]
    # kept for another file: discarded, both files gone
    assert partial.resume(identity(data[::-1])).total == 0
    assert not partial.data.exists() and not partial.control.exists()


def test_a_control_file_claiming_bytes_the_data_file_lacks_is_discarded(tmp_path: Path) -> None:
    data = os.urandom(4096)
    partial = PartialFile(tmp_path / "f.part", tmp_path / "f.json", "m/f")
    partial.begin(identity(data))
    partial.data.write_bytes(data[:100])
    partial.save(identity(data), Spans([Span(0, 4096, "gw")]))
    assert partial.resume(identity(data)).total == 0


def test_a_partial_of_modelfetch_0_1_is_resumed_as_a_prefix(tmp_path: Path) -> None:
    data = os.urandom(4096)
    want = identity(data)
    (tmp_path / "f.part").write_bytes(data[:1500])
    state = {"file": "m/f", "size": want.size, "sha256": want.sha256, "git_sha1": None}
    (tmp_path / "f.json").write_text(json.dumps(state))
    partial = PartialFile(tmp_path / "f.part", tmp_path / "f.json", "m/f")
    assert [(s.start, s.end) for s in partial.resume(want)] == [(0, 1500)]


# -- hashing in order ---------------------------------------------------------------------------


async def _assemble(tmp_path: Path, data: bytes, order: list[tuple[int, int]]) -> Assembler:
    want = identity(data)
    partial = PartialFile(tmp_path / "f.part", tmp_path / "f.json", "m/f")
    partial.begin(want)
    assembler = Assembler(partial, want, Digests(want), Spans(), hashed=0)
    for start, end in order:
        await assembler.write(start, [memoryview(data)[start:end]], "origin")
    return assembler


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_ranges_written_in_any_order_hash_to_the_file(tmp_path: Path, seed: int) -> None:
    import random

    data = os.urandom(3 * MiB + 17)
    cuts = sorted(random.Random(seed).sample(range(1, len(data)), 40))
    ranges = list(zip([0, *cuts], [*cuts, len(data)], strict=True))
    random.Random(seed).shuffle(ranges)
    assembler = await _assemble(tmp_path, data, ranges)
    verified = await assembler.finish()
    await assembler.aclose()
    assert verified.sha256 == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "f.part").read_bytes() == data
    saved = json.loads((tmp_path / "f.json").read_text())
    assert saved["done"] == [[0, len(data), "origin"]]


async def test_wrong_bytes_fail_and_forgotten_ranges_are_hashed_again(tmp_path: Path) -> None:
    data = os.urandom(2 * MiB)
    bad = bytearray(data)
    bad[MiB + 5] ^= 1
    want = identity(data)
    partial = PartialFile(tmp_path / "f.part", tmp_path / "f.json", "m/f")
    partial.begin(want)
    assembler = Assembler(partial, want, Digests(want), Spans(), hashed=0)
    await assembler.write(0, [bytes(bad[:MiB])], "good")
    await assembler.write(MiB, [bytes(bad[MiB:])], "liar")
    with pytest.raises(HashMismatch):
        await assembler.finish()
    await assembler.forget(MiB, 2 * MiB, lambda: Digests(want))
    await assembler.write(MiB, [data[MiB:]], "honest")
    assert (await assembler.finish()).sha256 == want.sha256
    await assembler.aclose()


async def test_a_hasher_far_behind_holds_writers_back_without_deadlock(tmp_path: Path) -> None:
    data = os.urandom(40 * MiB)  # more than the hashing lag allowed in memory
    step = MiB
    assembler = await asyncio.wait_for(
        _assemble(tmp_path, data, [(i, i + step) for i in range(0, len(data), step)]), 30
    )
    assert (await assembler.finish()).sha256 == hashlib.sha256(data).hexdigest()
    await assembler.aclose()
