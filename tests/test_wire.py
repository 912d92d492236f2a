"""Tensors across Serve calls as numpy arrays (larimar/serving/wire.py): exact both ways, nested
structures kept, what numpy cannot hold left alone, and the deployment-side decorator."""

import asyncio
import pickle

import numpy as np
import pytest
import torch

from larimar.serving.wire import arrays_in_and_out, pack, unpack


def test_pack_and_unpack_round_trip_exactly_through_pickle():
    torch.manual_seed(0)
    enc = {
        "keys": torch.randn(2, 5),
        "values": torch.randn(2, 7, dtype=torch.float64),
        "scope": torch.randn(3, 4)[:, 1:],  # not contiguous
        "owners": [0, 1, 1],
        "pair": (torch.arange(3), "text"),
        "none": None,
    }
    packed = pack(enc)
    assert isinstance(packed["keys"], np.ndarray) and isinstance(packed["pair"][0], np.ndarray)
    back = unpack(pickle.loads(pickle.dumps(packed)))
    for k in ("keys", "values", "scope"):
        assert isinstance(back[k], torch.Tensor) and back[k].dtype == enc[k].dtype
        assert torch.equal(back[k], enc[k])
    assert torch.equal(back["pair"][0], enc["pair"][0]) and back["pair"][1] == "text"
    assert back["owners"] == [0, 1, 1] and back["none"] is None


def test_what_numpy_cannot_hold_stays_a_tensor_and_read_only_arrays_are_copied():
    bf = torch.randn(2, 3).bfloat16()
    assert pack({"z": bf})["z"] is bf  # no bfloat16 in numpy: torch pickles it
    frozen = np.frombuffer(np.arange(4, dtype=np.float32).tobytes(), dtype=np.float32)  # read-only
    t = unpack(frozen)
    t += 1  # writable: a copy, not the read-only buffer
    assert t.tolist() == [1.0, 2.0, 3.0, 4.0] and frozen.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_a_deployment_method_gets_tensors_and_answers_arrays():
    class Deployment:
        @arrays_in_and_out
        async def double(self, req: dict) -> dict:
            assert isinstance(req["z"], torch.Tensor)
            return {"z": req["z"] * 2}

        @arrays_in_and_out
        async def pieces(self, req: dict):
            for row in req["z"]:
                yield {"row": row}

    d = Deployment()
    z = np.ones((2, 3), dtype=np.float32)
    out = asyncio.run(d.double({"z": z}))
    assert isinstance(out["z"], np.ndarray) and out["z"].tolist() == [[2.0] * 3] * 2

    async def collect():
        return [item async for item in d.pieces({"z": z})]

    items = asyncio.run(collect())
    assert len(items) == 2 and all(isinstance(i["row"], np.ndarray) for i in items)
    with pytest.raises(TypeError, match="async"):
        arrays_in_and_out(lambda self: None)
