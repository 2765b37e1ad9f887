"""Benchmarks of transfers: capped connections, several origins, a black hole, 1 GiB vs curl.

Run: .venv/bin/python bench/transfer.py [a] [b] [c] [d] [--runs 3]

Every client is a child process, run once per round with rounds interleaved (so a noisy
moment hits all of them), medians and their ratios printed from that one run:

(a) one origin capping each connection at C: modelfetch vs `aria2c -x8 -s8` vs
    hf_transfer.download (8 files) vs huggingface_hub.hf_hub_download vs curl.
    Aims: modelfetch >= 5 x C and >= 0.9 x aria2c's throughput.
(b) three origins (the hub and two IPFS path gateways), each capped at S in total:
    modelfetch (all three) vs aria2c given the three URLs vs curl (one). Aim >= 2.5 x S.
(c) a model whose first IPFS gateway accepts connections and never answers, and one whose
    first gateway refuses them, against the healthy gateway alone. Aims: black hole <=
    hedge_delay + 1.2 x healthy; refused <= healthy + 0.25 s.
(d) 1 GiB uncapped from the loopback hub: modelfetch (8 connections; and 1) vs `curl -o`.
    Aim <= 1.2 x curl's time; peak RSS <= 80 MB.
Needs Debian's `aria2` and PyPI's `hf-transfer` for (a) and (b) (skipped with a note if absent).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from _common import Runs, clean_env, make_file, modelfetch_argv, rounds, timed

from modelfetch.testing import GatewayServer, HubServer, faults

REPO = "bench/big-model"
FILE = "model.bin"
CID = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
MiB = 1 << 20
Client = Callable[[], tuple[float, int]]


def config(work: Path, name: str, body: str, files: list[str] = [FILE]) -> Path:  # noqa: B006
    path = work / f"{name}.toml"
    path.write_text(
        body
        + f'\n[models.big]\ndir = "big"\nfiles = {files!r}\n'
        f'huggingface = {{ repo = "{REPO}" }}\nipfs = {{ cid = "{CID}" }}\n'.replace("'", '"')
    )
    return path


def modelfetch(work: Path, cfg: Path, hub_url: str, label: str) -> Client:
    def run() -> tuple[float, int]:
        dest = work / f"mf-{label}"
        shutil.rmtree(dest, ignore_errors=True)
        cmd = [*modelfetch_argv(), "pull", "big", "--config", str(cfg), "--dir", str(dest)]
        try:
            return timed(cmd, clean_env(HF_ENDPOINT=hub_url))
        finally:
            shutil.rmtree(dest, ignore_errors=True)

    return run


def command(work: Path, label: str, argv: Callable[[Path], list[str]], **env: str) -> Client:
    def run() -> tuple[float, int]:
        dest = work / f"out-{label}"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir()
        try:
            return timed(argv(dest), clean_env(**env))
        finally:
            shutil.rmtree(dest, ignore_errors=True)

    return run


def aria2(urls: list[str]) -> Callable[[Path], list[str]]:
    return lambda d: [
        "aria2c", "-q", "-x8", "-s8", "-k1M", "--allow-overwrite=true",
        "--file-allocation=none", "-d", str(d), "-o", FILE, *urls,
    ]  # fmt: skip


def curl(url: str) -> Callable[[Path], list[str]]:
    return lambda d: ["curl", "-sSfL", "-o", str(d / FILE), url]


def hf_transfer(url: str) -> Callable[[Path], list[str]]:
    code = (
        "import sys, hf_transfer; "
        "hf_transfer.download(sys.argv[1], sys.argv[2], max_files=8, chunk_size=8 << 20)"
    )
    return lambda d: [sys.executable, "-c", code, url, str(d / FILE)]


def hf_hub(hub_url: str) -> Callable[[Path], list[str]]:
    code = (
        "import sys, huggingface_hub as h; "
        f"h.hf_hub_download({REPO!r}, {FILE!r}, cache_dir=sys.argv[1], endpoint={hub_url!r})"
    )
    return lambda d: [sys.executable, "-c", code, str(d)]


def have(tool: str) -> bool:
    if tool == "hf_transfer":
        try:
            import hf_transfer  # noqa: F401
        except ImportError:
            return False
        return True
    return shutil.which(tool) is not None


def scenario_a(work: Path, source: Path, sha: str, runs: int, cap: int) -> None:
    print(f"\n== (a) one origin capping every connection at {cap / MiB:.0f} MiB/s")
    with HubServer() as hub:
        hub.add_file_from_path(REPO, FILE, source, sha256=sha, lfs=True)
        hub.limit(per_connection=cap)
        resolve, cdn = hub.resolve_url(REPO, FILE), hub.cdn_url(sha)
        cfg = config(work, "a", 'order = ["cache", "huggingface"]')
        clients = {"modelfetch (8 connections)": modelfetch(work, cfg, hub.url, "a")}
        if have("aria2c"):
            clients["aria2c -x8 -s8"] = command(work, "aria2", aria2([resolve]))
        if have("hf_transfer"):
            clients["hf_transfer (8 files)"] = command(work, "hft", hf_transfer(cdn))
        clients["hf_hub_download"] = command(work, "hub", hf_hub(hub.url))
        clients["curl"] = command(work, "curl", curl(resolve))
        results = Runs()
        rounds(runs, clients, results)
    size = source.stat().st_size
    results.table(size)
    mf = size / results.median("modelfetch (8 connections)")
    print(f"\nmodelfetch = {mf / cap:.1f} x C (aim >= 5 x C)")
    if "aria2c -x8 -s8" in results.times:
        aria = size / results.median("aria2c -x8 -s8")
        print(f"modelfetch = {mf / aria:.2f} x aria2c's throughput (aim >= 0.9)")
    if "hf_transfer (8 files)" in results.times:
        hft = size / results.median("hf_transfer (8 files)")
        print(f"modelfetch = {mf / hft:.2f} x hf_transfer's throughput")


def scenario_b(work: Path, source: Path, sha: str, runs: int, cap: int) -> None:
    print(f"\n== (b) three origins, each capped at {cap / MiB:.0f} MiB/s in total")
    with HubServer() as hub, GatewayServer() as gw1, GatewayServer() as gw2:
        hub.add_file_from_path(REPO, FILE, source, sha256=sha, lfs=True)
        for gw in (gw1, gw2):
            gw.add_directory(CID, {FILE: source})
        for origin in (hub, gw1, gw2):
            origin.limit(total=cap)
        cfg = config(
            work,
            "b",
            'order = ["cache", "ipfs", "huggingface"]\n'
            f'[ipfs]\ngateways = ["{gw1.url}", "{gw2.url}"]',
        )
        urls = [hub.cdn_url(sha), gw1.ipfs_url(CID, FILE), gw2.ipfs_url(CID, FILE)]
        clients = {"modelfetch (3 origins)": modelfetch(work, cfg, hub.url, "b")}
        if have("aria2c"):
            clients["aria2c (3 URLs)"] = command(work, "aria2", aria2(urls))
        clients["curl (1 origin)"] = command(work, "curl", curl(urls[0]))
        results = Runs()
        rounds(runs, clients, results)
    size = source.stat().st_size
    results.table(size)
    mf = size / results.median("modelfetch (3 origins)")
    print(f"\nmodelfetch = {mf / cap:.2f} x S (aim >= 2.5 x S)")
    if "aria2c (3 URLs)" in results.times:
        print(f"modelfetch = {mf / (size / results.median('aria2c (3 URLs)')):.2f} x aria2c")


def scenario_c(work: Path, runs: int, hedge: float) -> None:
    print(f"\n== (c) first IPFS gateway black-holed / refusing (hedge_delay {hedge:g} s)")
    files = {f"part-{i}.bin": work / f"part-{i}.bin" for i in range(6)}
    shas = {name: make_file(path, 4 * MiB) for name, path in files.items()}
    with HubServer() as hub, GatewayServer() as healthy, GatewayServer() as hole:
        for name, path in files.items():
            hub.add_file_from_path(REPO, name, path, sha256=shas[name], lfs=True)
        healthy.add_directory(CID, dict(files))
        hole.inject(faults.black_hole())
        refusing = faults.unused_url()
        common = f'order = ["cache", "ipfs", "huggingface"]\n[transfer]\nhedge_delay = {hedge}\n'
        names = list(files)

        def cfg(label: str, gateways: list[str]) -> Path:
            listed = ", ".join(f'"{g}"' for g in gateways)
            return config(work, label, common + f"[ipfs]\ngateways = [{listed}]", names)

        clients = {
            "healthy gateway only": modelfetch(work, cfg("c0", [healthy.url]), hub.url, "c0"),
            "black hole first": modelfetch(work, cfg("c1", [hole.url, healthy.url]), hub.url, "c1"),
            "refusing first": modelfetch(work, cfg("c2", [refusing, healthy.url]), hub.url, "c2"),
        }
        results = Runs()
        rounds(runs, clients, results)
    results.table()
    healthy_s = results.median("healthy gateway only")
    hole_s, refused_s = results.median("black hole first"), results.median("refusing first")
    print(
        f"\nblack hole: {hole_s:.2f} s = hedge_delay + {(hole_s - hedge) / healthy_s:.2f} x "
        "healthy (aim <= hedge_delay + 1.2 x)"
    )
    print(f"refused: costs {refused_s - healthy_s:+.2f} s over healthy (aim <= 0.25 s)")


def scenario_d(work: Path, source: Path, sha: str, runs: int) -> None:
    print(f"\n== (d) {source.stat().st_size / MiB:.0f} MiB uncapped from a loopback hub")
    with HubServer() as hub:
        hub.add_file_from_path(REPO, FILE, source, sha256=sha, lfs=True)
        resolve = hub.resolve_url(REPO, FILE)
        many = config(work, "d8", 'order = ["cache", "huggingface"]')
        one = config(work, "d1", 'order = ["cache", "huggingface"]\n[transfer]\nconnections = 1')
        clients = {
            "curl -o": command(work, "curl", curl(resolve)),
            "modelfetch (8 connections)": modelfetch(work, many, hub.url, "d8"),
            "modelfetch (1 connection)": modelfetch(work, one, hub.url, "d1"),
        }
        results = Runs()
        rounds(runs, clients, results)
    size = source.stat().st_size
    results.table(size)
    base = results.median("curl -o")
    for name in ("modelfetch (8 connections)", "modelfetch (1 connection)"):
        print(f"\n{name} = {results.median(name) / base:.2f} x curl's time (aim <= 1.2 x)")
        print(f"{name} peak RSS = {results.rss_kib[name] / 1024:.0f} MiB (aim <= 80 MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", default=["a", "b", "c", "d"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cap-mib", type=float, default=8.0, help="C of (a), MiB/s")
    parser.add_argument("--origin-cap-mib", type=float, default=16.0, help="S of (b), MiB/s")
    parser.add_argument("--size-mib", type=int, default=128, help="file of (a) and (b)")
    parser.add_argument("--big-mib", type=int, default=1024, help="file of (d)")
    parser.add_argument("--hedge", type=float, default=2.0, help="hedge_delay of (c)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modelfetch-bench-"))
    try:
        if {"a", "b"} & set(args.scenarios):
            source = work / "source.bin"
            sha = make_file(source, args.size_mib * MiB)
            if "a" in args.scenarios:
                scenario_a(work, source, sha, args.runs, int(args.cap_mib * MiB))
            if "b" in args.scenarios:
                scenario_b(work, source, sha, args.runs, int(args.origin_cap_mib * MiB))
            source.unlink()
        if "c" in args.scenarios:
            scenario_c(work, args.runs, args.hedge)
        if "d" in args.scenarios:
            big = work / "big.bin"
            scenario_d(work, big, make_file(big, args.big_mib * MiB), args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
