"""The compile cache's reading of BCC's instructions: which ``ld_imm64`` load which map's fd."""

from __future__ import annotations

import struct

import pytest

from socketrace import compiled
from socketrace.compiled import CachedFunction

EXIT = struct.pack("<BBhi", 0x95, 0, 0, 0)
MOV_R0_7 = struct.pack("<BBhi", 0xB7, 0, 0, 7)


def ld_imm64(dst: int, src: int, imm: int) -> bytes:
    """A 64-bit load: two slots, the constant's low half in the first slot's imm."""
    return struct.pack("<BBhi", compiled.LD_IMM64, dst | src << 4, 0, imm) + struct.pack("<BBhi", 0, 0, 0, 0)


def test_map_fd_loads_are_recorded_by_map_name() -> None:
    code = MOV_R0_7 + ld_imm64(1, compiled.BPF_PSEUDO_MAP_FD, 5) + MOV_R0_7 + ld_imm64(2, 1, 9) + EXIT
    assert compiled._map_loads(code, {5: "events", 9: "control"}) == ((1, "events"), (4, "control"))


def test_a_plain_64_bit_constant_is_not_a_map() -> None:
    code = ld_imm64(1, 0, 5) + EXIT  # the value 5, not fd 5
    assert compiled._map_loads(code, {5: "events"}) == ()


@pytest.mark.parametrize(
    "code",
    [
        ld_imm64(1, compiled.BPF_PSEUDO_MAP_FD, 6) + EXIT,  # an fd that is no map of the program
        ld_imm64(1, 2, 5) + EXIT,  # BPF_PSEUDO_MAP_VALUE: an address inside a map
        ld_imm64(1, 3, 5) + EXIT,  # BPF_PSEUDO_BTF_ID
    ],
    ids=["unknown-fd", "map-value", "btf-id"],
)
def test_what_the_cache_cannot_rewrite_is_not_cached(code: bytes) -> None:
    assert compiled._map_loads(code, {5: "events"}) is None


def test_cached_fds_are_written_back_for_the_new_maps() -> None:
    code = MOV_R0_7 + ld_imm64(1, compiled.BPF_PSEUDO_MAP_FD, 5) + EXIT
    function = CachedFunction(code, ((1, "events"),))
    rewritten = compiled._with_map_fds(function, {"events": 42})
    assert compiled._map_loads(rewritten, {42: "events"}) == ((1, "events"),)
    assert rewritten[:8] == MOV_R0_7 and rewritten[24:] == EXIT
    with pytest.raises(KeyError):
        compiled._with_map_fds(function, {"control": 3})


@pytest.mark.parametrize(
    "value",
    [
        {"f": {"code": "", "maps": []}},  # empty
        {"f": {"code": "AAAA", "maps": []}},  # 3 bytes: not whole instructions
        {"f": {"code": "AAAAAAAAAAA=", "maps": [[1, "events"]]}},  # a load past the end
        {"f": {"code": "not base64!", "maps": []}},
        {"f": {"maps": []}},
    ],
)
def test_a_damaged_entry_is_rejected(value: dict) -> None:
    with pytest.raises((ValueError, KeyError)):
        compiled._parse(value)
