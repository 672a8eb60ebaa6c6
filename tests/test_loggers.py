"""log=: the csv, tensorboard and wandb loggers, end to end on tiny digits runs, and their errors."""

import csv
import glob
import json
import os
import struct
import time

import pytest

from conftest import assert_same_results, run_killed, tiny
from datafree import loggers
from datafree.cli import main
from datafree.methods import resolve
from datafree.engine import run
from datafree.errors import ConfigError, MissingPackageError
from datafree.identity import NEUTRAL_KEYS, run_identity
from datafree.results import read_jsonl


def _csv(path):
    with open(path, newline="") as f:
        text = f.read()
    rows = list(csv.DictReader(text.splitlines()))
    return text.splitlines()[0].split(","), rows


def _accs(d):
    return [r["acc"] for r in read_jsonl(os.path.join(d, "metrics.jsonl"))]


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """W&B offline, every directory it may write to inside tmp_path, run from an empty working directory."""
    pytest.importorskip("wandb", reason="log=wandb needs the wandb package (pip install wandb, or the test extra)")
    home = tmp_path / "wandb_home"
    for var, sub in (
        ("WANDB_DIR", "dir"),
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_ARTIFACT_DIR", "artifacts"),
    ):
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_NAME"):
        monkeypatch.delenv(var, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    user_dirs = [os.path.expanduser(p) for p in ("~/.config/wandb", "~/.cache/wandb", "~/.local/share/wandb")]
    existed = {p: os.path.exists(p) for p in user_dirs}
    yield tmp_path
    assert os.listdir(cwd) == [], "W&B wrote into the working directory"
    for p in user_dirs:
        assert os.path.exists(p) == existed[p], f"W&B wrote {p}, outside the test's directory"


def wandb_records(path):
    """The records of a W&B transaction log (``run-<id>.wandb``), read back as W&B's protobuf messages.

    The file is a 7-byte header (``:W&B``, magic, version) then 32 KiB blocks of records, each a 7-byte header
    (crc32, length, type: 1 full, 2 first, 3 middle, 4 last piece) and its payload; a block's tail shorter than
    a header is padding."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    if len(data) < 7:  # not even the header yet
        return
    assert data[:4] == b":W&B"
    pos, block, pieces = 7, 32768, b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:
            pos += room
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += room
            continue
        if pos + 7 + n > len(data):  # still being written
            return
        payload, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            yield pb.Record.FromString(pieces + payload if kind == 4 else payload)
            pieces = b""
        else:
            pieces = pieces + payload if kind == 3 else payload


def wandb_run(run_dir):
    """[(run id, display name, config, {step: {key: value}})] of each W&B offline run in ``run_dir``, oldest first."""
    out = []
    for d in sorted(glob.glob(os.path.join(run_dir, "wandb", "offline-run-*"))):
        (log,) = glob.glob(os.path.join(d, "run-*.wandb"))
        # W&B's service writes the log's last records a moment after run.finish() returns (a millisecond or two)
        deadline = time.time() + 10
        while [r.WhichOneof("record_type") for r in wandb_records(log)][-1:] != ["exit"] and time.time() < deadline:
            time.sleep(0.01)
        run_id, name, config, history = None, None, {}, {}
        for r in wandb_records(log):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run_id, name = r.run.run_id, r.run.display_name
                config.update({u.key: json.loads(u.value_json) for u in r.run.config.update})
            elif kind == "config":
                config.update({u.key: json.loads(u.value_json) for u in r.config.update})
            elif kind == "history":
                row = {}
                for i in r.history.item:  # a nested value (an image's fields) comes as a key path
                    *parents, last = [i.key] if i.key else list(i.nested_key)
                    node = row
                    for p in parents:
                        node = node.setdefault(p, {})
                    node[last] = json.loads(i.value_json)
                history[row["_step"]] = row
        out.append((run_id, name, config, history))
    return out


# --------------------------------------------------------------------------- choosing loggers


def test_logger_names_and_errors(zoo, tmp_path):
    assert loggers.names("none") == loggers.names("") == []
    assert loggers.names(" csv, tensorboard,csv,none") == ["csv", "tensorboard"]
    assert isinstance(loggers.open_logger("none", str(tmp_path), "x"), loggers.NullLogger)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ConfigError, match="Did you mean 'tensorboard'"):
        tiny("dafl", tmp_path / "r", log="csv,tensorbord")
    assert resolve({"log": "csv,tensorboard"}).log == "csv,tensorboard"


def test_unknown_logger_fails_before_any_file_is_written(zoo, tmp_path, capsys):
    out = tmp_path / "r"
    args = [
        "distill",
        "--method",
        "scratch",
        "--dataset",
        "digits",
        "--student",
        "lenet5_half",
        "--out",
        str(out),
        "epochs=1",
        "ep_steps=1",
        "samples=0",
        "progress=false",
    ]
    assert main(args + ["log=cvs"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1
    assert "unknown logger 'cvs'" in err and "'csv'" in err and "wandb" in err
    assert not out.exists()


def test_a_missing_package_is_one_error_line_before_any_file(zoo, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loggers, "installed", lambda module: module != "wandb")
    out = tmp_path / "r"
    args = [
        "distill",
        "--method",
        "scratch",
        "--dataset",
        "digits",
        "--student",
        "lenet5_half",
        "--out",
        str(out),
        "epochs=1",
        "ep_steps=1",
        "samples=0",
        "progress=false",
        "log=csv,wandb",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "pip install wandb" in err
    assert not out.exists()
    with pytest.raises(MissingPackageError, match="pip install wandb"):
        loggers.check("wandb")
    assert issubclass(MissingPackageError, ImportError)


def test_log_is_not_part_of_the_fingerprint(zoo, tmp_path):
    assert "log" in NEUTRAL_KEYS
    a = run_identity(tiny("dafl", tmp_path / "a"))
    b = run_identity(tiny("dafl", tmp_path / "b", log="csv,tensorboard"))
    assert a.fingerprint == b.fingerprint


# --------------------------------------------------------------------------- csv


def test_csv_logger_writes_one_row_per_evaluation(zoo, tmp_path):
    d = tmp_path / "r"
    run(tiny("dafl", d, log="csv"))
    header, rows = _csv(d / "log.csv")
    assert header[:3] == ["step", "acc", "lr"]
    for col in ("student_steps", "images_seen", "seconds", "synth/loss_g", "distill/loss"):
        assert col in header, col
    assert "epoch" not in header and len(set(header)) == len(header)
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert [float(r["acc"]) for r in rows] == _accs(d)
    assert [int(r["student_steps"]) for r in rows] == [3, 6]
    assert not (d / "tensorboard").exists() and not (d / "wandb").exists()


def test_csv_logger_adds_late_columns_and_resumes_without_a_second_header(tmp_path):
    lg = loggers.CSVLogger(str(tmp_path))
    lg.scalars({"acc": 10.0}, 1)
    lg.scalars({"acc": 20.0, "late": 1.5}, 2)
    lg.scalars({"acc": 30.0}, 3)
    lg.close()
    header, rows = _csv(tmp_path / "log.csv")
    assert header == ["step", "acc", "late"]
    assert [(r["step"], r["acc"], r["late"]) for r in rows] == [
        ("1", "10.0", ""),
        ("2", "20.0", "1.5"),
        ("3", "30.0", ""),
    ]
    with open(tmp_path / "log.csv", "a") as f:
        f.write("4,40.0,2")  # a row cut by a kill: no newline
    lg = loggers.CSVLogger(str(tmp_path), start_step=2)  # resumed after step 2: rows 3 and 4 are redone
    lg.scalars({"acc": 33.0, "late": 2.5}, 3)
    lg.close()
    text = (tmp_path / "log.csv").read_text()
    assert text.count("step,") == 1 and text.endswith("\n")
    header, rows = _csv(tmp_path / "log.csv")
    assert header == ["step", "acc", "late"]
    assert [(r["step"], r["acc"]) for r in rows] == [("1", "10.0"), ("2", "20.0"), ("3", "33.0")]
    assert loggers.CSVLogger(str(tmp_path)).rows == []  # a new run (start_step 0) starts the file again


def test_csv_log_of_a_resumed_run_goes_on_after_its_checkpoint(zoo, tmp_path, monkeypatch):
    cfg = lambda d: tiny("dafl", d, epochs=3, log="csv")  # noqa: E731
    run_killed(cfg(tmp_path / "cut"), monkeypatch)
    path = tmp_path / "cut" / "log.csv"
    header, rows = _csv(path)
    assert [r["step"] for r in rows] == ["1"]
    with open(path, "a") as f:  # the killed attempt got to log epoch 2, not to checkpoint it
        f.write("2," + ",".join("0" for _ in header[1:]) + "\n")
    run(cfg(tmp_path / "cut"), resume=True)
    header2, rows = _csv(path)
    assert header2 == header and path.read_text().count("step,") == 1
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert [float(r["acc"]) for r in rows] == _accs(tmp_path / "cut")


# --------------------------------------------------------------------------- tensorboard


def test_tensorboard_logger_writes_scalars_images_and_config(zoo, tmp_path):
    pytest.importorskip("tensorboard", reason="log=tensorboard needs the tensorboard package")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    d = tmp_path / "r"
    run(tiny("dafl", d, log="tensorboard"))
    events = [f for f in os.listdir(d / "tensorboard") if f.startswith("events")]
    assert len(events) == 1
    acc = EventAccumulator(str(d / "tensorboard")).Reload()
    tags = acc.Tags()
    assert {"acc", "lr", "synth/loss_g", "distill/loss"} <= set(tags["scalars"])
    assert [(e.step, round(e.value, 4)) for e in acc.Scalars("acc")] == [
        (i + 1, round(a, 4)) for i, a in enumerate(_accs(d))
    ]
    assert [e.step for e in acc.Images("samples")] == [1, 2]
    assert "config/text_summary" in tags["tensors"]


# --------------------------------------------------------------------------- wandb


def test_wandb_logger_offline_run_holds_config_and_history(zoo, wandb_env, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")  # offline is the default: no network, no login
    d = wandb_env / "r"
    run(tiny("dafl", d, log="wandb"))
    ((run_id, name, config, history),) = wandb_run(str(d))
    assert name == "r" and run_id == (d / "wandb" / "datafree-id").read_text().strip()
    assert config["method"] == "dafl" and config["dataset"] == "digits" and config["run_id"] == "r"
    assert config["synth"]["ngf"] == 8 and len(config["fingerprint"]) == 64
    assert sorted(history) == [1, 2]
    assert [history[s]["acc"] for s in (1, 2)] == pytest.approx(_accs(d))
    assert "synth/loss_g" in history[1] and "distill/loss" in history[2]
    assert history[1]["samples"]["_type"] == "image-file"
    assert glob.glob(str(d / "wandb" / "offline-run-*" / "files" / "media" / "images" / "samples_*.png"))


def test_several_loggers_resume_and_leave_results_unchanged(zoo, wandb_env, monkeypatch):
    """log=csv,tensorboard,wandb on a killed and resumed run: the same results as log=none, the csv file goes
    on, and the W&B run is continued under its id (one offline directory per attempt)."""
    pytest.importorskip("tensorboard")
    run(tiny("dafl", wandb_env / "plain", epochs=3))
    cfg = lambda: tiny("dafl", wandb_env / "cut", epochs=3, log="csv,tensorboard,wandb")  # noqa: E731
    run_killed(cfg(), monkeypatch)
    run(cfg(), resume=True)
    assert_same_results(wandb_env / "plain", wandb_env / "cut")
    d = wandb_env / "cut"
    _, rows = _csv(d / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    first, second = wandb_run(str(d))
    assert first[0] == second[0] and first[1] == second[1] == "cut"
    assert sorted(first[3]) == [1] and sorted(second[3]) == [2, 3]
    assert [h["acc"] for h in (first[3][1], second[3][2], second[3][3])] == pytest.approx(_accs(d))
    assert len([f for f in os.listdir(d / "tensorboard") if f.startswith("events")]) == 2
