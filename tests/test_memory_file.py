"""The memory file (larimar/memory_file.py): a saved memory reads, forgets and scopes exactly as the
original; files that are not ours, are damaged or were made for another model are refused."""

import pickle

import pytest
import torch

from tests.conftest import tiny_editor

from larimar.memory_file import MemoryFileError, from_bytes, to_bytes


@pytest.fixture(scope="module")
def editor():
    return tiny_editor()


@pytest.mark.parametrize("keys", ["linear", "relu"])
def test_a_saved_memory_is_the_same_memory(editor, tmp_path, keys):
    mem = editor.create_memory(keys=keys)
    mem.edit(["alice lives in", "bob plays the"], ["paris", "piano"], subject=["alice", None])
    mem.write("carol works as a chef .")
    mem.forget(2)
    path = mem.save(tmp_path / "kb.larimar.safetensors")
    back = editor.load_memory(path)
    assert back.state.key_kind == keys and len(back) == 2 and back.core.next_id == 4
    assert {i: f.text for i, f in back.facts.items()} == {i: f.text for i, f in mem.facts.items()}
    assert back.facts[1].subject == "alice"
    for name in ("M", "P", "count", "reference"):
        assert torch.equal(getattr(back.state, name), getattr(mem.state, name)), name
    queries = ["alice lives in", "Where does alice live? alice lives in", "carol works as a", "what is rain"]
    z0, m0 = mem.read(queries)
    z1, m1 = back.read(queries)
    assert torch.equal(z0, z1) and [m.in_scope for m in m0] == [m.in_scope for m in m1]
    back.forget(1)  # forgetting after a load subtracts exactly what was written
    mem.forget(1)
    torch.testing.assert_close(back.state.M, mem.state.M, rtol=0, atol=0)
    assert back.edit(["dave drives a"], ["bus"]) == [4]  # ids continue, never reused


def test_foreign_damaged_and_mismatched_files_are_refused(editor, tmp_path):
    mem = editor.create_memory()
    mem.write("alice lives in paris .")
    raw = to_bytes(mem.core, encoder="tiny-bert")
    with pytest.raises(MemoryFileError, match="latents"):
        from_bytes(raw, None, latent_dim=384)
    with pytest.raises(MemoryFileError, match="encoder"):
        from_bytes(raw, None, encoder="minilm-l6")
    evil = tmp_path / "snapshot.pt"  # a pickle that would run a command if unpickled
    evil.write_bytes(pickle.dumps({"x": 1}))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    for bad in (
        pickle.dumps(Evil()),
        b"",
        b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json",
        raw[: len(raw) // 2],
        evil.read_bytes(),
    ):
        with pytest.raises(MemoryFileError):
            from_bytes(bad, None)
    assert not marker.exists()
    from safetensors.torch import save

    with pytest.raises(MemoryFileError, match="not a Larimar memory file"):
        from_bytes(save({"x": torch.zeros(2)}), None)
