"""Instruction-set facts in the fingerprint: what they key, how tables written before them are treated, and what
`predict`, `serve` and the card say when the CPU is not the one an artifact was measured on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdnas_deploy.fingerprint import fingerprint_id, machine_fingerprint
from kdnas_deploy.hardware import load_profile
from kdnas_deploy.instruction_set import (
    UNKNOWN, InstructionSet, describe_info, from_info, host_instruction_set, mismatch,
)
from kdnas_deploy.latency.table import LatencyTable
from kdnas_deploy.latency.timing import Timing
from kdnas_deploy.latency.transfer import describe, merge
from kdnas_deploy.space import StudentArch
from kdnas_deploy.util.errors import KdnasError

RECORDED = Path(__file__).parent / "data" / "fingerprints"
T_VNNI = Timing(median_ms=7.43, p10_ms=7.3, p90_ms=7.6, spread=0.04, samples=30, rounds=1, noisy=False)
T_AVX2 = Timing(median_ms=13.7, p10_ms=13.5, p90_ms=13.9, spread=0.03, samples=30, rounds=1, noisy=False)
TEACHER = StudentArch(6, 384, 12, 1536)


def recorded(name: str) -> dict:
    return json.loads((RECORDED / f"{name}.json").read_text())


@pytest.mark.parametrize("name, summary", [("epyc-avx2", "AVX2"), ("epyc-avx512-vnni", "AVX512-VNNI")])
def test_a_recorded_cpuinfo_flags_line_gives_the_recorded_features(name, summary):
    doc = recorded(name)
    isa = InstructionSet.of("x86_64", doc["cpuinfo_flags"].split())
    assert isa.to_info() == doc["fingerprint"]["cpu_features"]
    assert isa.summary == summary == describe_info(doc["fingerprint"])


def test_two_fingerprints_differing_only_in_vnni_differ():
    vnni = recorded("epyc-avx512-vnni")["fingerprint"]
    no_vnni = {**vnni, "cpu_features": [f for f in vnni["cpu_features"] if f != "avx512_vnni"]}
    assert no_vnni["cpu"] == vnni["cpu"] and no_vnni["cpu_count"] == vnni["cpu_count"]
    assert fingerprint_id(no_vnni) != fingerprint_id(vnni)
    assert describe_info(no_vnni) == "AVX-512" and describe_info(vnni) == "AVX512-VNNI"
    # the same for the pair of recorded hosts, which share the model string "AMD EPYC" and every version
    avx2 = recorded("epyc-avx2")["fingerprint"]
    assert {k for k in vnni if vnni[k] != avx2[k]} == {"cpu_features"}
    assert fingerprint_id(avx2) != fingerprint_id(vnni)


def test_this_hosts_fingerprint_carries_its_instruction_set():
    info = machine_fingerprint(load_profile("cpu-int8"))
    assert from_info(info) == host_instruction_set()
    assert from_info({k: v for k, v in info.items() if k != "cpu_features"}) is None


@pytest.mark.parametrize("arch, flags, summary", [
    ("x86_64", "avx2 fma", "AVX2"),
    ("x86_64", "sse4_2", "x86-64 without AVX2"),
    ("x86_64", "avx2 fma avx512f avx512bw avx512dq avx512vl", "AVX-512"),
    ("x86_64", "avx2 fma avx_vnni", "AVX-VNNI"),
    ("x86_64", "avx2 fma avx512f avx512bw avx512dq avx512vl avx512_vnni", "AVX512-VNNI"),
    ("x86_64", "avx2 fma avx512f avx512bw avx512dq avx512vl avx512_vnni amx_tile amx_int8 amx_bf16", "AMX"),
    ("aarch64", "fp asimd evtstrm aes crc32", "Arm NEON"),
    ("arm64", "fp asimd asimddp", "Arm dot-product"),
    ("aarch64", "fp asimd asimddp i8mm sve sve2 bf16", "Arm i8mm"),
])
def test_the_int8_kernel_tier_of_each_feature_set(arch, flags, summary):
    isa = InstructionSet.of(arch, flags.split())
    assert isa.summary == summary
    assert "evtstrm" not in isa.features and "sse4_2" not in isa.features  # only what picks kernels is kept


def test_mismatch_says_in_one_line_which_instruction_set_the_card_was_measured_on():
    vnni = from_info(recorded("epyc-avx512-vnni")["fingerprint"])
    avx2 = from_info(recorded("epyc-avx2")["fingerprint"])
    assert mismatch(vnni, vnni) is None
    line = mismatch(vnni, avx2)
    assert line is not None and "\n" not in line
    assert "measured on AVX512-VNNI; this CPU has AVX2 only" in line
    assert "this CPU has AVX512-VNNI:" in mismatch(avx2, vnni)  # type: ignore[operator]
    assert "does not record the instruction set" in mismatch(None, avx2)  # type: ignore[operator]
    amx = InstructionSet.of("x86_64", [*vnni.features, "amx_bf16"])  # same tier, another feature
    assert "adds amx_bf16" in mismatch(vnni, amx)  # type: ignore[operator]


def test_a_table_keeps_an_avx2_hosts_rows_apart_from_a_vnni_hosts(tmp_path):
    """Rows the two "AMD EPYC" hosts timed with the same software land under two machines, and a merge of one
    host's table into the other's keeps both."""
    vnni, avx2 = recorded("epyc-avx512-vnni")["fingerprint"], recorded("epyc-avx2")["fingerprint"]
    ids = {"vnni": fingerprint_id(vnni), "avx2": fingerprint_id(avx2)}
    with LatencyTable(tmp_path / "avx2.sqlite") as t:
        t.register(ids["avx2"], avx2)
        t.put(ids["avx2"], "model", TEACHER, 1, 128, T_AVX2, 6, 3.0)
    with LatencyTable(tmp_path / "home.sqlite") as home:
        home.register(ids["vnni"], vnni)
        home.put(ids["vnni"], "model", TEACHER, 1, 128, T_VNNI, 6, 3.0)
        [merged] = merge(home, [tmp_path / "avx2.sqlite"])
        assert merged.added == 1 and merged.machine == ids["avx2"]
        assert home.get(ids["vnni"], "model", TEACHER, 1, 128).timing.median_ms == 7.43
        assert home.get(ids["avx2"], "model", TEACHER, 1, 128).timing.median_ms == 13.7
        words = {m.id: describe(m.info) for m in home.machines()}
    assert "(AVX512-VNNI)" in words[ids["vnni"]] and "(AVX2)" in words[ids["avx2"]]


def test_tables_written_before_instruction_sets_show_unknown_and_are_not_merged(tmp_path):
    """The decision record's rule: rows under a fingerprint without features stay readable and are listed as
    "instruction set unknown"; they are never this host's (their id cannot match a fingerprint with features), and
    `table merge` refuses them, since the two hosts above would have shared that id."""
    old_info = {k: v for k, v in recorded("epyc-avx2")["fingerprint"].items() if k != "cpu_features"}
    old_id = fingerprint_id(old_info)
    with LatencyTable(tmp_path / "old.sqlite") as t:
        t.register(old_id, old_info)
        t.put(old_id, "model", TEACHER, 1, 128, T_AVX2, 6, 3.0)
        [m] = t.machines()
        assert describe_info(m.info) == UNKNOWN and f"({UNKNOWN})" in describe(m.info)
    assert old_id != fingerprint_id(machine_fingerprint(load_profile("cpu-int8")))
    with LatencyTable(tmp_path / "home.sqlite") as home:
        with pytest.raises(KdnasError, match="profiled before fingerprints recorded the instruction set"):
            merge(home, [tmp_path / "old.sqlite"])
        assert home.count() == 0
