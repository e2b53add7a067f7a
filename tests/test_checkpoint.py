"""Checkpoints: in-process save/restore equals an uninterrupted run; bad files give clear errors."""
import pytest
import torch

from fedsim import CheckpointError, Simulation, parse_config
from fedsim.checkpoint import load_checkpoint, save_checkpoint

BASE = {
    "data": {"dataset": "digits", "num_clients": 40},
    "model": {"name": "mlp"},
    "train": {"rounds": 6, "clients_per_round": 5, "lr": 0.2, "eval_every": 2, "threads": 1},
    "rule": {"k": 200, "rows": 3, "cols": 1000, "sketch_backend": "numpy"},
    "output": {"progress": False, "checkpoint_every": 3},
}


def spec_for(rule, **rule_kw):
    raw = {k: dict(v) for k, v in BASE.items()}
    raw["rule"].update(rule_kw, name=rule)
    (spec,) = parse_config(raw).runs()
    return spec


@pytest.mark.parametrize("rule,kw", [
    ("fetchsgd", {}),
    ("local_topk", {"local_error_feedback": True}),
    ("fedavg", {"local_epochs": 2, "server_momentum": True}),
    ("true_topk", {}),
])
def test_restore_continues_bit_identically(tmp_path, rule, kw):
    spec = spec_for(rule, **kw)
    full = Simulation(spec, out_dir=tmp_path / "full").run()
    first = Simulation(spec, out_dir=tmp_path / "cut")
    for _ in range(3):
        first.step()
    first.save_checkpoint()
    first.step()  # progress that the crash loses
    second = Simulation(spec, out_dir=tmp_path / "cut")
    resumed = second.run(resume=True)
    assert torch.equal(second.params, torch.load(tmp_path / "full" / "final_params.pt"))
    assert resumed.history == full.history
    assert (resumed.up_bytes, resumed.down_bytes) == (full.up_bytes, full.down_bytes)
    assert (tmp_path / "cut" / "metrics.csv").read_text() == (tmp_path / "full" / "metrics.csv").read_text()


def _written(tmp_path):
    spec = spec_for("fetchsgd")
    sim = Simulation(spec, out_dir=tmp_path)
    sim.step()
    path = sim.save_checkpoint()
    return spec, sim, path


def test_truncated_checkpoint_is_refused(tmp_path):
    spec, sim, path = _written(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        Simulation(spec, out_dir=tmp_path).restore()
    path.write_bytes(data[:20])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path, spec.config_hash())


def test_corrupt_and_foreign_files_are_refused(tmp_path):
    spec, sim, path = _written(tmp_path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path, spec.config_hash())
    other = tmp_path / "other.ckpt"
    other.write_bytes(b"x" * 500)
    with pytest.raises(CheckpointError, match="not a fedsim checkpoint"):
        load_checkpoint(other, spec.config_hash())
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.ckpt", spec.config_hash())


def test_checkpoint_of_another_config_is_refused_and_state_untouched(tmp_path):
    spec, sim, path = _written(tmp_path)
    other = spec_for("fetchsgd", k=150)
    assert other.config_hash() != spec.config_hash()
    fresh = Simulation(other, out_dir=tmp_path)
    before = fresh.params.clone()
    with pytest.raises(CheckpointError, match="another configuration"):
        fresh.restore()
    assert torch.equal(fresh.params, before) and fresh.t == 0


def test_save_is_atomic_no_temporary_left(tmp_path):
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, {"a": torch.arange(3)}, "0" * 64)
    save_checkpoint(path, {"a": torch.arange(4)}, "0" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt"]
    assert torch.equal(load_checkpoint(path, "0" * 64)["a"], torch.arange(4))
