"""Reliability of a training run (issue 14): a non-finite state is never saved, a damaged
checkpoint is reported in one line, moved aside and the previous good one restored (with the
losses of an uninterrupted run), a full disk names the disk and keeps the earlier checkpoints,
a changed config or a second process on the same workdir is refused, and every bad command-line
input exits 2 with one line naming the key or path."""

import errno
import fcntl
import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.data import train_dataset
from jaxdiff.models import configs as model_configs
from jaxdiff.tasks import get_task, train
from jaxdiff.train import ConfigError, NonFiniteLoss, get_default_config
from jaxdiff.train import checkpoint as ckpt
from jaxdiff.train import loop as loop_lib
from jaxdiff.train.experiment import WorkdirLocked
from jaxdiff.train.step import all_finite, make_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "launch", "main.py")
TOY = os.path.join(ROOT, "configs", "toy_2d.py")
N = 12  # steps of the reference run; checkpoints every 4 (keep_latest=2)


def toy_config(**training):
    c = get_default_config()
    c.model = model_configs.mlp()
    c.model.nf, c.model.num_layers, c.model.ema_rate = 32, 1, 0.9
    c.data.dataset, c.data.dim, c.data.centered, c.data.random_flip = "toy", 2, True, False
    c.data.image_size, c.data.num_channels = 1, 1
    t = c.training
    t.batch_size, t.n_iters, t.reduce_mean = 32, N, True
    t.log_freq, t.eval_freq, t.snapshot_freq, t.snapshot_freq_for_preemption = 1, 1000, 1000, 4
    t.snapshot_sampling, t.async_checkpointing = False, False
    c.optim.lr, c.optim.warmup = 1e-2, 2
    c.eval.batch_size, c.eval.num_loss_batches = 64, 1
    c.parallel.num_devices = 1
    for k, v in training.items():
        t[k] = v
    return c


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 12-step run's losses, and a run stopped after 8 steps (checkpoints 4 and
    8 on disk) to copy and damage."""
    root = tmp_path_factory.mktemp("ref")
    full = train(toy_config(), str(root / "full"), progress=False)["losses"]
    assert sorted(full) == list(range(1, N + 1))
    part = train(toy_config(), str(root / "base"), max_steps=8, progress=False)
    assert part["step"] == 8
    assert sorted(os.listdir(root / "base" / "checkpoints")) == ["4", "8"]
    return full, str(root / "base")


def _copy(base, dst):
    shutil.copytree(base, dst)
    return str(dst)


def _array_files(step_dir):
    files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
    assert files, os.listdir(os.path.join(step_dir, "state"))
    return sorted(files, key=os.path.getsize, reverse=True)


# -- integrity ------------------------------------------------------------------------------------

def test_checksum_formula_sharding_independence_and_bit_sensitivity():
    x = np.arange(10, dtype=np.float32) * 0.5 - 1.0
    words = x.view(np.uint32).astype(np.uint64)
    want = int(np.sum(words * (2 * np.arange(10, dtype=np.uint64) + 1)) % 2**32)
    tree = {"a": jnp.asarray(x), "b": jnp.arange(6, dtype=jnp.int32).reshape(2, 3),
            "h": jnp.ones(5, jnp.bfloat16)}
    sums = ckpt.state_checksums(tree)
    assert sums[0] == want
    h = np.ones(5, np.float32).view(np.uint32) >> 16  # bfloat16 1.0 is 0x3f80
    assert sums[2] == int(np.sum(h.astype(np.uint64) * (2 * np.arange(5) + 1)) % 2**32)
    if jax.device_count() >= 8:  # sharded over 8 devices: the same sums
        mesh = jax.make_mesh((8,), ("data",), devices=jax.devices()[:8])
        s = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        big = jnp.arange(64, dtype=jnp.float32) / 7.0
        assert ckpt.state_checksums(jax.device_put(big, s)) == ckpt.state_checksums(big)
    # every single flipped bit of every word changes the sum
    for i in range(10):
        for b in range(32):
            y = x.copy().view(np.uint32)
            y[i] ^= np.uint32(1 << b)
            assert ckpt.state_checksums({"a": jnp.asarray(y.view(np.float32))})[0] != want


def test_verify_names_the_leaf_whose_checksum_differs(tmp_path):
    state = {"w": jnp.arange(4.0), "v": jnp.ones(3)}
    m = ckpt.make_manager(str(tmp_path), async_save=False, with_data=False)
    ckpt.save(m, 3, state)
    m.close()
    m = ckpt.make_manager(str(tmp_path), read_only=True, with_data=False, async_save=False)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
    _, meta = ckpt.restore(m, 3, abstract, check=False)
    m.close()
    assert [r[0] for r in meta["integrity"]["leaves"]] == ["['v']", "['w']"]
    ckpt.verify(state, meta, 3)  # the saved state passes
    bad = {"w": state["w"].at[2].set(2.0000002), "v": state["v"]}
    with pytest.raises(ckpt.CheckpointDamaged, match=r"state leaf \['w'\]"):
        ckpt.verify(bad, meta, 3)


# -- non-finite training --------------------------------------------------------------------------

def test_train_step_flags_a_non_finite_state():
    c = toy_config()
    batch = jnp.asarray(next(iter(train_dataset(c, "")))["x"])[None]
    for lr, finite in ((1e-2, True), (1e39, False)):
        c.optim.lr = lr
        t = get_task(c)
        _, m = jax.jit(make_train_step(t.train_loss, t.optimizer, ema_rate=0.9))(
            t.init(jax.random.PRNGKey(0)), batch)
        assert bool(m["state_finite"]) is finite, lr
        assert np.isfinite(np.asarray(m["loss"])).all()  # the loss of the step is still finite
    assert bool(all_finite({"a": jnp.ones(2), "k": jnp.zeros(2, jnp.int32)}))
    assert not bool(all_finite({"a": jnp.array([1.0, jnp.inf])}))


def test_blow_up_at_the_first_step_saves_nothing(tmp_path):
    c = toy_config()
    c.optim.lr = 1e39  # the first Adam update overflows float32; its loss is finite
    with pytest.raises(NonFiniteLoss, match="not finite after the update at step 1.*no "
                                            "checkpoint was saved"):
        train(c, str(tmp_path), progress=False)
    assert not os.listdir(tmp_path / "checkpoints")


def test_blow_up_after_good_steps_keeps_a_finite_checkpoint_and_a_restart_trains(reference,
                                                                                 tmp_path):
    full, base = reference
    wd = _copy(base, tmp_path / "run")
    shutil.rmtree(os.path.join(wd, "checkpoints", "8"))  # resume from 4
    c = toy_config(resume_with_changes=True)
    c.optim.lr = 1e39
    with pytest.raises(NonFiniteLoss, match=r"at step 5.*newest checkpoint on disk, step 4"):
        train(c, wd, progress=False)
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["4"]
    # the kept checkpoint is finite and a sane learning rate trains from it, exactly as before
    c.optim.lr = 1e-2
    r = train(c, wd, progress=False)
    assert sorted(r["losses"]) == list(range(5, N + 1))
    assert all(r["losses"][s] == full[s] for s in r["losses"])


def test_non_finite_state_at_a_save_step_is_not_saved(tmp_path, monkeypatch):
    real = loop_lib.make_train_step

    def poisoned(*a, **k):
        step = real(*a, **k)

        def wrapped(state, batches):  # params become NaN in the update of step 8 (a save step)
            new, m = step(state, batches)
            bad = new.step >= 8
            new = new.replace(params=jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p),
                                                  new.params))
            return new, {**m, "state_finite": all_finite((new.params, new.ema_params,
                                                          new.opt_state))}

        return wrapped

    monkeypatch.setattr(loop_lib, "make_train_step", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"after the update at step 8 .*step 4"):
        train(toy_config(), str(tmp_path), progress=False)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]


# -- damaged checkpoints --------------------------------------------------------------------------

def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip_bit(path):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0x10
        f.seek(0)
        f.write(data)


DAMAGES = {
    "truncated_array_file": lambda d: _truncate(_array_files(d)[0]),
    "deleted_array_file": lambda d: os.remove(_array_files(d)[0]),
    "emptied_metadata_file": lambda d: open(os.path.join(d, "state", "_METADATA"), "w").close(),
    "emptied_meta_item": lambda d: open(os.path.join(d, "meta", "metadata"), "w").close(),
    "half_written_iterator_json": lambda d: _truncate(
        os.path.join(d, "data", "process_0-of-1.json")),
    "flipped_bit_in_array_file": lambda d: _flip_bit(_array_files(d)[0]),
    "empty_stray_step_dir": None,  # checkpoints/12 created empty: fall back to 8
}
FAST = ("truncated_array_file", "empty_stray_step_dir")  # the others: -m slow


@pytest.mark.parametrize("damage", [d if d in FAST else pytest.param(d, marks=pytest.mark.slow)
                                    for d in DAMAGES])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_good_one(reference, tmp_path,
                                                                       capsys, damage):
    full, base = reference
    wd = _copy(base, tmp_path / "run")
    if damage == "empty_stray_step_dir":
        bad, good = 12, 8
        os.makedirs(os.path.join(wd, "checkpoints", "12"))
    else:
        bad, good = 8, 4
        DAMAGES[damage](os.path.join(wd, "checkpoints", "8"))
    capsys.readouterr()
    r = train(toy_config(), wd, progress=False)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "is damaged" in ln]
    assert len(lines) == 1, lines
    assert f"checkpoint {os.path.join(wd, 'checkpoints', str(bad))} is damaged (" in lines[0]
    moved = os.listdir(os.path.join(wd, "checkpoints_damaged"))
    assert len(moved) == 1 and moved[0].startswith(f"{bad}-"), moved
    assert sorted(r["losses"]) == list(range(good + 1, N + 1))
    for s in r["losses"]:
        assert r["losses"][s] == full[s], (damage, s)


def test_flipped_bit_in_the_data_state_is_caught_by_its_sha256(reference, tmp_path, capsys):
    # a still-valid JSON whose iterator position changed: only the checksum can tell
    _, base = reference
    wd = _copy(base, tmp_path / "run")
    path = os.path.join(wd, "checkpoints", "8", "data", "process_0-of-1.json")
    with open(path) as f:
        state = json.load(f)
    assert state == {"next_index": 8}  # grain's position after 8 batches
    with open(path, "w") as f:  # one flipped bit: 8 -> 9
        json.dump({"next_index": 9}, f, indent=4)
    r = train(toy_config(), wd, max_steps=1, progress=False)
    assert r["step"] == 5
    assert "sha256 mismatch in the data-iterator state" in capsys.readouterr().err


def test_all_checkpoints_damaged_stops_listing_them_and_eval_skips_read_only(reference,
                                                                            tmp_path, capsys):
    _, base = reference
    # eval / sample: the damaged newest is skipped, not moved
    wd = _copy(base, tmp_path / "eval")
    _truncate(_array_files(os.path.join(wd, "checkpoints", "8"))[0])
    task = get_task(toy_config())
    state, meta = ckpt.restore_latest(wd, task.abstract_state)
    assert meta["step"] == 4 and int(state.step) == 4
    assert "skipped (not moved: read-only)" in capsys.readouterr().err
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["4", "8"]
    # training with both damaged: a clear error listing both, nothing restarted from scratch
    _truncate(_array_files(os.path.join(wd, "checkpoints", "4"))[0])
    with pytest.raises(ckpt.NoGoodCheckpoint, match=r"tried 8 \(.*\); 4 \("):
        train(toy_config(), wd, progress=False)
    with pytest.raises(ckpt.NoGoodCheckpoint, match="damaged ones are in"):  # and again
        train(toy_config(), wd, progress=False)
    assert len(os.listdir(os.path.join(wd, "checkpoints_damaged"))) == 2


# -- full disk ------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield str(d)
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def _fill(path, leave):
    fd = os.open(os.path.join(path, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
        while os.statvfs(path).f_bavail * os.statvfs(path).f_frsize > leave:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_full_disk_during_a_save_names_the_disk_keeps_checkpoints_and_resumes(reference,
                                                                             small_disk):
    full, _ = reference
    wd = os.path.join(small_disk, "run")
    assert train(toy_config(), wd, max_steps=4, progress=False)["step"] == 4
    _fill(small_disk, leave=64 * 1024)  # the metrics lines fit, the next checkpoint does not
    with pytest.raises(ckpt.DiskFull) as e:
        train(toy_config(), wd, progress=False)
    msg = str(e.value)
    assert e.value.errno == errno.ENOSPC
    assert f"no space left on device {small_disk!r}" in msg and "up to step 4" in msg, msg
    assert [s for s in os.listdir(os.path.join(wd, "checkpoints")) if s.isdigit()] == ["4"]
    os.remove(os.path.join(small_disk, "filler"))
    r = train(toy_config(), wd, progress=False)
    assert sorted(r["losses"]) == list(range(5, N + 1))
    assert all(r["losses"][s] == full[s] for s in r["losses"])


# -- config changes and concurrent runs -----------------------------------------------------------

def test_a_changed_config_is_refused_naming_the_keys(reference, tmp_path):
    full, base = reference
    wd = _copy(base, tmp_path / "run")
    c = toy_config()
    c.optim.lr, c.model.ema_rate = 3e-3, 0.5
    c.training.n_iters, c.eval.batch_size = 16, 32  # not a change of what is trained
    with pytest.raises(ConfigError, match=r"config\.model\.ema_rate: 0\.9 -> 0\.5; "
                                          r"config\.optim\.lr: 0\.01 -> 0\.003; .*"
                                          r"resume_with_changes=True") as e:
        train(c, wd, progress=False)
    assert "n_iters" not in str(e.value) and "eval.batch_size" not in str(e.value)
    c2 = toy_config(n_iters=9)  # a longer / shorter run is not a change
    assert train(c2, wd, progress=False)["losses"] == {9: full[9]}


def test_second_process_on_a_workdir_is_refused_naming_the_first(tmp_path):
    wd = tmp_path / "run"
    wd.mkdir()
    with open(wd / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write(f"{os.getpid()}\n")
        f.flush()
        with pytest.raises(WorkdirLocked, match=rf"in use by process {os.getpid()} "):
            train(toy_config(), str(wd), progress=False)
    # released (the holder is gone): training proceeds
    assert train(toy_config(n_iters=1), str(wd), progress=False)["step"] == 1


# -- one line for every bad input -----------------------------------------------------------------

def _env(devices=2):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


TINY = ["--config.model.nf=32", "--config.model.num_layers=1",
        "--config.training.batch_size=32", "--config.training.log_freq=1",
        "--config.training.eval_freq=1000", "--config.training.snapshot_freq=1000",
        "--config.training.snapshot_freq_for_preemption=2",
        "--config.training.snapshot_sampling=False", "--config.eval.batch_size=64",
        "--config.eval.num_loss_batches=1", "--config.training.n_iters=2"]


def test_every_bad_input_exits_2_with_one_line(tmp_path):
    bad_py = tmp_path / "bad.py"
    bad_py.write_text("def get_config():\n    return 1 +\n")
    ran = tmp_path / "ran"  # a finished run to resume with another config / lock
    r = subprocess.run([sys.executable, MAIN, f"--config={TOY}", f"--workdir={ran}"] + TINY,
                       env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    cases = {  # name: (args, what the one line must contain)
        "train batch": ([f"--config={TOY}", "--config.training.batch_size=33"],
                        "config.training.batch_size=33 is not divisible by the 2 devices"),
        "eval batch (eval)": ([f"--config={TOY}", "--mode=eval", f"--workdir={ran}",
                               "--config.eval.batch_size=33"],
                              "config.eval.batch_size=33 is not divisible by the 2 devices"),
        "num_devices": ([f"--config={TOY}", "--config.parallel.num_devices=4"],
                        "config.parallel.num_devices=4 but 2 devices exist"),
        "freq": ([f"--config={TOY}", "--config.training.n_jitted_steps=3"],
                 "config.training.log_freq=100 must be a multiple of "
                 "config.training.n_jitted_steps=3"),
        "eval batch > split": ([f"--config={TOY}", "--config.data.toy_size=1000",
                                "--config.eval.batch_size=1024"],
                               "config.eval.batch_size=1024 is larger than the 1000 examples"),
        "missing config": (["--config=/nonexistent/cfg.py"],
                           "config file '/nonexistent/cfg.py' does not exist"),
        "syntax error": ([f"--config={bad_py}"], f"syntax error in '{bad_py}' line 2"),
        "adaptive with num_steps": ([f"--config={TOY}", "--config.sampling.method=adaptive",
                                     "--config.training.n_iters=1"],
                                    "config.sampling.num_steps=500: sampler 'adaptive' takes "
                                    "no such option"),
        "changed config": ([f"--config={TOY}", f"--workdir={ran}", "--config.optim.lr=0.5"]
                           + TINY, "config.optim.lr: 0.001 -> 0.5"),
        "locked": ([f"--config={TOY}", f"--workdir={ran}"] + TINY,
                   f"is in use by process {os.getpid()}"),
    }
    def start(name):
        args = cases[name][0]
        if not any(a.startswith("--workdir=") for a in args):
            args = args + [f"--workdir={tmp_path / name.replace(' ', '_').replace('>', 'gt')}"]
        return subprocess.Popen([sys.executable, MAIN, *args], env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    results = {}
    with open(ran / "lock", "w") as lock:  # this process holds the run's lock
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        p = start("locked")
        results["locked"] = (*p.communicate(timeout=600), p.returncode)
    procs = {name: start(name) for name in cases if name != "locked"}
    for name, p in procs.items():
        results[name] = (*p.communicate(timeout=600), p.returncode)
    for name, (_, want) in cases.items():
        out, err, rc = results[name]
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert rc == 2, (name, err[-1500:])
        assert "Traceback" not in err, (name, err[-1500:])
        assert len(lines) == 1 and want in lines[0], (name, lines, err[-800:])


def test_load_config_names_a_missing_file_and_a_syntax_error(tmp_path):
    from jaxdiff.train import load_config
    with pytest.raises(FileNotFoundError, match="'/nonexistent.py' does not exist"):
        load_config("/nonexistent.py")
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\ndef get_config(:\n")
    with pytest.raises(ConfigError, match=r"bad\.py': syntax error at line 2"):
        load_config(str(bad))
