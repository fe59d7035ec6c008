"""SnapshotStore: whole files only, newest first, the last few kept, damage detected."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from flux.engine import StateEngine
from flux.events import validate_event
from flux.snapshots import SnapshotStore


def name(seq: int) -> str:
    return f"snapshot-{seq:020d}.json.gz"


def engine_bytes(n: int) -> bytes:
    engine = StateEngine()
    for i in range(n):
        event = validate_event(
            {
                "stream": "s",
                "source": "t",
                "timestamp": 1,
                "payload": {"entity_id": f"ns/{i}", "properties": {"v": i, "pad": "x" * 50}},
            }
        )
        engine.apply(event, i + 1, 1_700_000_000_000_000 + i)
    return engine.snapshot()


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots")
    data = engine_bytes(20)
    path = store.save(data, 20)
    assert path == tmp_path / "snapshots" / name(20)
    assert store.load(path) == data
    assert gzip.decompress(path.read_bytes()) == data
    assert store.sequence_of(path) == 20
    assert StateEngine.restore(store.load(path)).last_seq == 20


def test_paths_are_newest_first_and_only_the_last_few_are_kept(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep=3)
    assert store.paths() == []
    for seq in (5, 100, 7, 2_000, 30):
        store.save(b"{}", seq)
    assert [p.name for p in store.paths()] == [name(2_000), name(100), name(30)]
    (tmp_path / "notes.txt").write_text("not a snapshot")
    (tmp_path / (name(9_999) + ".tmp")).write_bytes(b"unfinished")
    assert [p.name for p in store.paths()] == [name(2_000), name(100), name(30)]


def test_saving_the_same_sequence_again_replaces_the_file(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(b"old", 3)
    store.save(b"new", 3)
    assert store.load(tmp_path / name(3)) == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name(3)]


def test_a_missing_directory_has_no_snapshots(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "nowhere")
    assert store.paths() == []
    store.clean_temp_files()


def test_sequence_of_rejects_other_names() -> None:
    with pytest.raises(ValueError):
        SnapshotStore.sequence_of(Path("snapshot-12.json.gz"))


def test_unfinished_temp_files_are_cleaned(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(b"{}", 1)
    tmp = tmp_path / (name(2) + ".tmp")
    tmp.write_bytes(b"half")
    store.clean_temp_files()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name(1)]


def flip_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 8]) + data[middle + 8 :]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: d[: len(d) // 2], id="truncated"),
        pytest.param(lambda d: d[:-4], id="length-trailer-cut"),
        pytest.param(lambda d: d[:-8] + bytes(8), id="crc-and-length-zeroed"),
        pytest.param(flip_middle, id="bytes-flipped"),
        pytest.param(lambda d: b"garbage" + d[7:], id="bad-header"),
        pytest.param(lambda d: b"", id="empty"),
    ],
)
def test_damaged_files_fail_to_load_with_value_error(tmp_path: Path, damage: object) -> None:
    store = SnapshotStore(tmp_path)
    path = store.save(engine_bytes(200), 200)
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(ValueError):
        store.load(path)


def test_an_unreadable_file_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        SnapshotStore.load(tmp_path / name(1))


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_a_failed_write_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    store = SnapshotStore(tmp_path / "snapshots")
    store.save(engine_bytes(3), 3)

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(f"flux.snapshots.os.{failing}", fail)
    with pytest.raises(OSError, match="No space left"):
        store.save(engine_bytes(5), 5)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == [name(3)]
