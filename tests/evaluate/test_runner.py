"""ddim.evaluate.runner's sample store against a damaged or hostile folder: what sits in a chunk's or the
key's place is never written through, never blocks, and never passes for samples it is not; bad cells are
refused before any folder is written. A tiny 8×8 UNet on a 50-step schedule keeps each grid to a second."""

from __future__ import annotations

import math
import os
import threading

import hostile as H
import pytest

from ddim import Schedule
from ddim.evaluate.runner import Cell, SampleStore, chunk_ranges, sample_grid
from ddim.generate import RunOptions

N, BATCH = 4, 2
SHAPE = (1, 8, 8)
ONE_CELL = (Cell(2, 0.0),)


@pytest.fixture(scope="module")
def model():
    return H.tiny_unet()


@pytest.fixture(scope="module")
def schedule():
    return Schedule.linear(50)


def grid(model, schedule, out, cells=ONE_CELL, seed=0):
    return sample_grid(model, schedule, list(cells), N, out, run=RunOptions(seed=seed, batch_size=BATCH))


@pytest.fixture
def drawn(model, schedule, tmp_path):
    """A grid run's output folder, its cell folder and the bytes of its two chunks."""
    out = tmp_path / "out"
    grid(model, schedule, out)
    cell = out / "samples" / "S2_eta0"
    return out, cell, {p.name: p.read_bytes() for p in cell.glob("*.npy")}


def test_a_link_in_a_chunks_place_is_replaced_not_written_through(model, schedule, drawn, tmp_path):
    out, cell, chunks = drawn
    victim = tmp_path / "victim" / "notes.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"precious data")
    first, second = sorted(chunks)
    (cell / first).unlink()
    (cell / first).symlink_to(victim)
    (cell / second).unlink()
    (cell / second).symlink_to(victim.parent / "new.npy")  # leads nowhere
    grid(model, schedule, out)
    assert victim.read_bytes() == b"precious data" and sorted(os.listdir(victim.parent)) == ["notes.txt"]
    for name, data in chunks.items():  # redrawn in place, as the same images
        assert not (cell / name).is_symlink() and (cell / name).read_bytes() == data


def test_a_pipe_in_a_chunks_place_is_redrawn_without_blocking(drawn):
    _, cell, chunks = drawn
    first = min(chunks)
    (cell / first).unlink()
    os.mkfifo(cell / first)
    store, found = SampleStore(cell), []
    reader = threading.Thread(target=lambda: found.append(store.missing(chunk_ranges(N, BATCH), SHAPE)), daemon=True)
    reader.start()
    reader.join(timeout=20)
    if reader.is_alive():  # release the blocked open before failing
        os.close(os.open(cell / first, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("SampleStore.missing blocked on a pipe in a chunk's place")
    assert found == [[range(2)]]


@pytest.mark.parametrize("damage", ["missing", "pipe", "loop"])
def test_chunks_without_a_readable_key_are_not_trusted(model, schedule, drawn, damage):
    out, cell, chunks = drawn
    key = cell / "key.json"
    key.unlink()
    if damage == "pipe":
        os.mkfifo(key)
    elif damage == "loop":
        key.symlink_to(key)
    message = "holds sample chunks but no key.json" if damage == "missing" else "key.json is unreadable"
    with pytest.raises(ValueError, match=message):
        grid(model, schedule, out, seed=1)  # the seed-0 chunks must not pass for seed 1's
    assert {p.name: p.read_bytes() for p in cell.glob("*.npy")} == chunks


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0, "eta": 0.0}, "steps must be an integer >= 1, got 0"),
    ({"steps": True, "eta": 0.0}, "steps must be an integer >= 1, got True"),
    ({"steps": 2, "eta": math.nan}, "eta must be a number >= 0 or 'large', got nan"),
    ({"steps": 2, "eta": "0"}, "eta must be a number >= 0 or 'large', got '0'"),
    ({"steps": 2, "eta": 0.0, "solver": "../../escape"}, "solver must be a solver's name, got '../../escape'"),
    ({"steps": 2, "eta": 0.0, "solver": "bogus"}, "unknown solver 'bogus'; allowed: ddim"),
])
def test_bad_cells_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Cell(**kwargs)


@pytest.mark.parametrize("bad, message", [
    (Cell(60, 0.0), "1 <= steps <= T=50, got 60"),
    (Cell(2, 1.0, "heun"), "eta=1.0 applies to solver 'ddim' only"),
])
def test_a_bad_cell_is_refused_before_any_folder_is_written(model, schedule, tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        grid(model, schedule, tmp_path / "out", cells=(Cell(2, 0.0), bad))
    assert not (tmp_path / "out").exists()


def test_a_folder_in_a_chunks_place_is_found_before_sampling(model, schedule, drawn):
    out, cell, chunks = drawn
    first, second = sorted(chunks)
    (cell / first).unlink()
    (cell / first).mkdir()
    (cell / second).unlink()
    with pytest.raises(ValueError, match=f"{first} is a folder where a sample chunk goes"):
        grid(model, schedule, out)
    assert not (cell / second).exists()  # nothing was drawn
