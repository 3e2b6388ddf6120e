"""`[sweep] tracker`: every evaluation row also goes to Weights & Biases (offline here), one W&B run per
training run, named by its run_id and grouped by its sweep; parquet stays the store, run ids do not
change, and a tracker that fails gives one warning and never stops a run."""

import dataclasses
import json
import struct
import warnings

import pyarrow.parquet as pq
import pytest

from conftest import write_sweep
from scaling import records
from scaling.config import ConfigError
from scaling.sweep.reader import load_sweep
from scaling.training import tracker as tracker_mod
from scaling.training.run import Halt, run_pack_and_record, train_run

# Two runs (seeds 0 and 1) of one shape: 12 steps of 8 sequences, evaluations at steps 1, 3 and 12.
SWEEP = """
[sweep]
name = "tracked"
out_dir = "{out}"
seeds = [0, 1]
{sweep_extra}
[data]
seq_len = 16
[model]
head_dim = 8
[train]
batch_tokens = 128
eval_points = 3
eval_sequences = 8
checkpoint_every = 0
[grid]
models = [{{ n_layer = 1, d_model = 16 }}]
tokens = [1536]
"""


def sweep_file(tmp_path, sweep_extra=""):
    return write_sweep(tmp_path / "tracked.toml", SWEEP.format(out=tmp_path / "out", sweep_extra=sweep_extra))


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """W&B offline, its files under tmp_path/wandb-files (never the network, never the user's folders)."""
    folder = tmp_path / "wandb-files"
    folder.mkdir()
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(folder), "WANDB_SILENT": "true",
                       "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
                       "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}.items():
        monkeypatch.setenv(key, value)
    wandb = pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install -e '.[wandb]')")
    wandb.teardown()  # W&B reads its environment once per process: again, with these settings
    yield folder / "wandb"
    wandb.teardown()


def wandb_records(path):
    """The records of an offline run's `.wandb` file, parsed with W&B's own protobuf messages. The file
    is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks, each chunk a 7-byte header
    (CRC-32C, little-endian length, type: 1 full, 2 first, 3 middle, 4 last) and its bytes."""
    from wandb.proto import wandb_internal_pb2 as pb
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def offline_runs(root):
    """{W&B run name: (its run record, its history rows as {key: value})} of every offline run under `root`."""
    out = {}
    for run, rows in offline_run_list(root):
        assert run.display_name not in out
        out[run.display_name] = (run, rows)
    return out


def offline_run_list(root):
    """(run record, history rows) of every offline run under `root`, in the order they started."""
    out = []
    for path in root.glob("offline-run-*/run-*.wandb"):
        run, rows = None, []
        for r in wandb_records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run = r.run
            elif kind == "history":
                rows.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item})
        assert run is not None
        out.append((run, rows))
    return sorted(out, key=lambda entry: entry[0].start_time.ToNanoseconds())


def test_a_tracked_pack_logs_every_evaluation_row_of_each_run_to_its_own_offline_run(tmp_path, offline):
    sweep = load_sweep(sweep_file(tmp_path, 'tracker = "wandb"\ntracker_project = "tiny-test"'))
    assert len(sweep.runs) == 2 and all(s.tracker == "wandb" for s in sweep.runs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a tracker failure would warn: here it must not
        results = run_pack_and_record(list(sweep.runs), sweep.out_dir)  # the two seeds train as one pack
    assert [r["status"] for r in results] == ["complete", "complete"]
    runs = offline_runs(offline)
    assert sorted(runs) == sorted(s.run_id for s in sweep.runs)
    for spec in sweep.runs:
        run, rows = runs[spec.run_id]
        assert run.run_group == "tracked" and run.project == "tiny-test"
        config = {i.key: json.loads(i.value_json) for i in run.config.update}
        assert config["run_id"] == spec.run_id and config["seed"] == spec.seed
        assert config["model"]["d_model"] == 16
        history = pq.read_table(records.run_dir(sweep.out_dir, spec.run_id) / "history.parquet").to_pandas()
        assert len(rows) == len(history) == 3
        assert [row["_step"] for row in rows] == history["step"].tolist() == [1, 3, 12]
        for row, (_, expected) in zip(rows, history.iterrows()):
            for column in ("val_loss", "train_loss", "lr", "tokens", "flops"):
                assert row[column] == pytest.approx(expected[column], rel=1e-6), column
            assert "run_id" not in row and "status" not in row  # numeric columns only


def test_a_resumed_run_sends_its_earlier_rows_again_to_a_new_run_of_the_same_name(tmp_path, offline):
    spec = load_sweep(sweep_file(tmp_path, 'tracker = "wandb"')).runs[0]
    with pytest.raises(Halt):
        train_run(spec, tmp_path / "out", halt_at=3)  # killed after the checkpoint of step 3
    assert train_run(spec, tmp_path / "out")["status"] == "complete"
    (first, before), (second, after) = offline_run_list(offline)
    assert first.display_name == second.display_name == spec.run_id
    assert [r["_step"] for r in before] == [1, 3] and [r["_step"] for r in after] == [1, 3, 12]
    history = pq.read_table(records.run_dir(tmp_path / "out", spec.run_id) / "history.parquet").to_pandas()
    assert [r["val_loss"] for r in after] == pytest.approx(history["val_loss"].tolist(), rel=1e-6)


def test_the_tracker_does_not_enter_run_ids(tmp_path):
    plain = load_sweep(sweep_file(tmp_path))
    tracked = load_sweep(sweep_file(tmp_path, 'tracker = "wandb"\ntracker_project = "elsewhere"'))
    assert [s.tracker for s in plain.runs] == ["none", "none"]
    assert [s.tracker_project for s in tracked.runs] == ["elsewhere", "elsewhere"]
    assert [s.run_id for s in plain.runs] == [s.run_id for s in tracked.runs]
    spec = tracked.runs[0]
    assert dataclasses.replace(spec, tracker="none").run_id == spec.run_id


@pytest.mark.parametrize("value", ['"tensorboard"', "true", '"WandB"'])
def test_an_unknown_tracker_is_one_line_naming_the_file_and_key(tmp_path, value):
    path = sweep_file(tmp_path, f"tracker = {value}")
    with pytest.raises(ConfigError) as e:
        load_sweep(path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{path}: sweep.tracker: ")
    assert "none, wandb" in message


def test_the_cli_refuses_an_unknown_tracker_with_exit_status_2(tmp_path, capsys):
    from scaling import cli
    path = sweep_file(tmp_path, 'tracker = "mlflow"')
    assert cli.main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "sweep.tracker" in err and "mlflow" in err
    assert not (tmp_path / "out").exists()


class Broken:
    """A W&B run whose every log raises, as a full disk or a lost service would."""

    def __init__(self):
        self.logs, self.finished = 0, []

    def log(self, *args, **kwargs):
        self.logs += 1
        raise OSError("No space left on device")

    def finish(self, exit_code=None):
        self.finished.append(exit_code)


def test_a_tracker_whose_log_raises_warns_once_and_the_run_completes(tmp_path, monkeypatch):
    broken = Broken()
    monkeypatch.setattr(tracker_mod.WandbTracker, "_open", lambda self, spec: setattr(self, "run", broken))
    spec = load_sweep(sweep_file(tmp_path, 'tracker = "wandb"')).runs[0]
    with pytest.warns(RuntimeWarning) as caught:
        result = train_run(spec, tmp_path / "out")
    tracker_warnings = [w for w in caught if "tracker" in str(w.message)]
    assert len(tracker_warnings) == 1, [str(w.message) for w in caught]
    message = str(tracker_warnings[0].message)
    assert spec.run_id in message and "No space left on device" in message
    assert broken.logs == 1 and broken.finished == [1]  # quiet after its first error
    assert result["status"] == "complete"
    folder = records.run_dir(tmp_path / "out", spec.run_id)
    assert pq.read_table(folder / "history.parquet").to_pandas()["step"].tolist() == [1, 3, 12]
    assert pq.read_table(folder / "summary.parquet").to_pandas()["status"].tolist() == ["complete"]


def test_a_tracker_that_cannot_start_warns_once_and_sends_nothing(monkeypatch):
    def fail(self, spec):
        raise ImportError("No module named 'wandb'")
    monkeypatch.setattr(tracker_mod.WandbTracker, "_open", fail)
    spec = type("Spec", (), {"run_id": "L1-d16", "tracker": "wandb"})()
    with pytest.warns(RuntimeWarning, match="No module named 'wandb'") as caught:
        t = tracker_mod.open_tracker(spec)
        t.log({"step": 1, "val_loss": 2.0})
        t.finish("complete")
    assert len(caught) == 1


def test_only_finite_numbers_are_logged_and_off_process_0_nothing_is():
    row = {"step": 3, "val_loss": 2.5, "val_bits_per_byte": float("nan"), "run_id": "x", "status": "running",
           "error": None, "n_devices": 1, "flag": True}
    assert tracker_mod.numeric(row) == {"step": 3, "val_loss": 2.5, "n_devices": 1}
    spec = type("Spec", (), {"run_id": "L1-d16", "tracker": "wandb"})()
    assert type(tracker_mod.open_tracker(spec, writer=False)) is tracker_mod.Tracker
