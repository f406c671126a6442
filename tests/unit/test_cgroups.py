"""Reading a container's counters from its cgroup files: both layouts, from text fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockyard.core.usage import Counters
from dockyard.runtime import cgroups

ID = "8cc27d66a6b19a12da0c57bf1cb19b54e1fc16f0abee82f827508f9e2c920919"

# As this machine's engine (cgroupfs driver, v1) shows them, under <controller>/docker/<id>/.
V1 = {
    "cpuacct/cpuacct.usage": "1234567890\n",
    "memory/memory.usage_in_bytes": "41943040\n",
    "memory/memory.max_usage_in_bytes": "52428800\n",
    "memory/memory.failcnt": "3\n",
    "memory/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
    "memory/cgroup.procs": "14078\n14090\n",
    "pids/pids.current": "13\n",
    "pids/pids.events": "max 7\n",
    "blkio/blkio.throttle.io_service_bytes": (
        "254:0 Read 1048576\n254:0 Write 2097152\n254:0 Sync 0\n254:0 Total 3145728\n"
        "Total 3145728\n"
    ),
    "cpu/cpu.stat": (
        "nr_periods 100\nnr_throttled 60\nthrottled_time 2500000000\nnr_bursts 0\nburst_time 0\n"
    ),
}

# cgroup v2, systemd driver: one directory, system.slice/docker-<id>.scope/.
V2 = {
    "cpu.stat": (
        "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n"
        "nr_periods 10\nnr_throttled 2\nthrottled_usec 40000\n"
    ),
    "memory.current": "10485760\n",
    "memory.peak": "20971520\n",
    "memory.events": "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
    "pids.current": "5\n",
    "pids.events": "max 0\n",
    "io.stat": "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n"
    "8:16 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
    "cgroup.procs": "200\n",
}


def write_v1(root: Path, files: dict[str, str] = V1) -> None:
    for name, text in files.items():
        controller, file = name.split("/")
        directory = root / controller / "docker" / ID
        directory.mkdir(parents=True, exist_ok=True)
        (directory / file).write_text(text)


def write_v2(root: Path, files: dict[str, str] = V2) -> Path:
    (root / "cgroup.controllers").write_text("cpu memory pids io\n")
    directory = root / "system.slice" / f"docker-{ID}.scope"
    directory.mkdir(parents=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def test_v1_layout_is_found_and_read(tmp_path: Path) -> None:
    write_v1(tmp_path)
    cgroup = cgroups.locate(ID, tmp_path)
    assert cgroup is not None and cgroup.version == 1
    assert cgroups.read(cgroup) == Counters(
        cpu_usec=1234567,
        memory_bytes=41943040,
        memory_peak=52428800,
        memory_max_events=3,
        oom_kills=1,
        pids_current=13,
        pids_peak=None,  # this fixture's kernel has no pids.peak
        pids_max_events=7,
        io_read_bytes=1048576,
        io_write_bytes=2097152,
        cpu_periods=100,
        cpu_throttled_periods=60,
        cpu_throttled_usec=2500000,
    )
    assert cgroups.any_pid(cgroup) == 14078


def test_v1_with_cpu_and_cpuacct_mounted_together(tmp_path: Path) -> None:
    files = {
        k.replace("cpuacct/", "cpu,cpuacct/").replace("cpu/", "cpu,cpuacct/"): v
        for k, v in V1.items()
    }
    for name, text in files.items():
        controller, file = name.split("/")
        directory = tmp_path / controller / "docker" / ID
        directory.mkdir(parents=True, exist_ok=True)
        (directory / file).write_text(text)
    cgroup = cgroups.locate(ID, tmp_path)
    assert cgroup is not None
    counters = cgroups.read(cgroup)
    assert counters is not None and counters.cpu_usec == 1234567


def test_v2_layout_is_found_and_read(tmp_path: Path) -> None:
    write_v2(tmp_path)
    cgroup = cgroups.locate(ID, tmp_path)
    assert cgroup is not None and cgroup.version == 2
    assert cgroups.read(cgroup) == Counters(
        cpu_usec=2500000,
        memory_bytes=10485760,
        memory_peak=20971520,
        memory_max_events=4,
        oom_kills=1,
        pids_current=5,
        pids_peak=None,
        pids_max_events=0,
        io_read_bytes=8192,
        io_write_bytes=8192,
        cpu_periods=10,
        cpu_throttled_periods=2,
        cpu_throttled_usec=40000,
    )
    assert cgroups.any_pid(cgroup) == 200


def test_v2_without_memory_peak_or_io_stat_reads_what_there_is(tmp_path: Path) -> None:
    files = {k: v for k, v in V2.items() if k not in ("memory.peak", "io.stat")}
    write_v2(tmp_path, files)
    cgroup = cgroups.locate(ID, tmp_path)
    assert cgroup is not None
    counters = cgroups.read(cgroup)
    assert counters is not None
    assert (counters.memory_peak, counters.io_read_bytes) == (None, 0)


def test_a_container_without_reachable_files_is_not_located(tmp_path: Path) -> None:
    assert cgroups.locate(ID, tmp_path) is None  # another host's engine: use its stats API
    write_v1(tmp_path, {k: v for k, v in V1.items() if not k.startswith("pids/")})
    assert cgroups.locate(ID, tmp_path) is None


def test_a_cgroup_removed_under_the_reader_reads_none(tmp_path: Path) -> None:
    directory = write_v2(tmp_path)
    cgroup = cgroups.locate(ID, tmp_path)
    assert cgroup is not None
    (directory / "memory.current").unlink()  # the engine removes it as the container stops
    assert cgroups.read(cgroup) is None


@pytest.mark.parametrize(
    ("stats", "expected"),
    [
        ({"cpu_stats": {"cpu_usage": {"total_usage": 0}}}, None),  # stopped: all zero
        (
            {
                "cpu_stats": {
                    "cpu_usage": {"total_usage": 3_000_000_000},
                    "throttling_data": {
                        "periods": 10,
                        "throttled_periods": 6,
                        "throttled_time": 1_000_000,
                    },
                },
                "memory_stats": {"usage": 1000, "failcnt": 0},  # v2: no max_usage
                "pids_stats": {"current": 4},
                "blkio_stats": {
                    "io_service_bytes_recursive": [
                        {"op": "read", "value": 10},
                        {"op": "Write", "value": 20},
                    ]
                },
            },
            Counters(
                cpu_usec=3_000_000,
                memory_bytes=1000,
                pids_current=4,
                io_read_bytes=10,
                io_write_bytes=20,
                cpu_periods=10,
                cpu_throttled_periods=6,
                cpu_throttled_usec=1000,
            ),
        ),
    ],
)
def test_the_engines_stats_answer_as_counters(stats: dict[str, object], expected: object) -> None:
    assert cgroups.counters_from_stats(stats) == expected


def test_parsers_skip_what_they_do_not_know() -> None:
    assert cgroups.parse_flat("max 3\nweird\nx y\n") == {"max": 3}
    assert cgroups.parse_blkio("Total 5\n8:0 Read x\n") == (0, 0)
    assert cgroups.parse_io_stat("8:0 rbytes=1 wbytes=oops\n") == (1, 0)
    assert (cgroups.parse_max("max\n"), cgroups.parse_max("32\n")) == (None, 32)


def test_cgroups_reachable_here_or_not(tmp_path: Path) -> None:
    assert not cgroups.reachable(tmp_path)
    write_v1(tmp_path)
    assert cgroups.reachable(tmp_path)
    v2 = tmp_path / "v2"
    v2.mkdir()
    write_v2(v2)
    assert cgroups.reachable(v2)


def test_a_file_this_reader_does_not_understand_reads_none(tmp_path: Path) -> None:
    write_v2(tmp_path, {**V2, "memory.current": "max\n"})
    cgroup = cgroups.locate(ID, tmp_path)
    assert cgroup is not None
    assert cgroups.read(cgroup) is None
