"""The task protocol: the registry picks the class from the config, docs/tasks.md's worked
example (a new task in under 50 lines) trains, the periodic and ``--mode=eval`` held-out losses
are the same evaluator (equal numbers), and the loop / evaluation / launcher never ask which task
they run."""

import json
import pathlib
import re
import tokenize

import jax
import numpy as np
import pytest

from jaxdiff.data import train_dataset
from jaxdiff.tasks import TASKS, ScoreSDETask, evaluate, get_task, load_params, task_name, train
from jaxdiff.train import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _example_namespace() -> dict:
    text = (ROOT / "docs" / "tasks.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1, len(blocks)
    code = blocks[0]
    assert len(code.strip().splitlines()) < 50, "the worked example must stay under 50 lines"
    ns: dict = {"__name__": "tasks_md_example"}
    exec(compile(code, "docs/tasks.md", "exec"), ns)
    return ns


@pytest.fixture(scope="module")
def example():
    ns = _example_namespace()
    yield ns
    TASKS.pop("score_sde_time_weighted", None)


def test_docs_example_task_trains_with_its_own_loss(example, tmp_path):
    task, result = example["run_example"](str(tmp_path / "run"))
    assert type(task).__name__ == "TimeWeightedTask" and task.name == "score_sde_time_weighted"
    assert result["step"] == 6 and result["status"] == "done"
    assert sorted(result["losses"]) == list(range(1, 7))
    assert all(np.isfinite(v) for v in result["losses"].values())
    assert sorted(result["eval"]) == [3, 6]
    # its loss is the (1 + t)-weighted mean of the plain task's per-example losses, at the same key
    config = example["toy_config"]()
    config.task = "score_sde"
    plain = get_task(config)
    assert type(plain) is ScoreSDETask
    params = task.init(jax.random.PRNGKey(0)).params
    batch = np.asarray(next(iter(train_dataset(task.config, "")))["x"])
    key = jax.random.PRNGKey(5)
    got, _ = task.eval_loss(params, key, batch)
    ref, aux = plain.eval_loss(params, key, batch)
    want = float(np.mean((1.0 + np.asarray(aux["t"])) * np.asarray(aux["losses"])))
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    assert float(got) > 1.05 * float(ref)   # the weights (1 + t, t ~ U(0, 1)) matter


def test_registry_selection_and_unknown_task(example):
    config = example["toy_config"]()
    assert task_name(config) == "score_sde_time_weighted"
    config.task = "score_sde"
    assert task_name(config) == "score_sde"
    with config.unlocked():
        config.msdiff = {"mode": "multiscale"}
    assert task_name(config) == "msdiff_multiscale"
    config = example["toy_config"]()
    config.task = "no_such_task"
    with pytest.raises(ConfigError, match=r"config\.task: no task 'no_such_task'.*score_sde"):
        get_task(config)


def test_periodic_and_mode_eval_held_out_loss_are_one_evaluator(example, tmp_path):
    config = example["toy_config"](n_iters=4)
    config.task = "score_sde"
    config.training.eval_freq = 4
    config.eval.enable_sampling = False
    task = get_task(config)
    wd = str(tmp_path / "run")
    r = train(task, wd, progress=False)
    assert sorted(r["eval"]) == [4]
    rep = evaluate(task, wd)
    # the same evaluator with the same key: --mode=eval reproduces the logged value exactly
    assert rep["step"] == 4 and rep["held_out_loss"] == r["eval"][4]
    assert set(rep) == {"step", "dataset", "sde", "ema", "held_out_loss"}
    on_disk = json.loads((tmp_path / "run" / "eval" / "report_4.json").read_text())
    assert on_disk == rep
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["eval/loss"] for row in rows if "eval/loss" in row] == [r["eval"][4]]
    params, step, same = load_params(task, wd)
    assert step == 4 and same is task
    # a fresh task from the same config (a new process) gets the same number too
    assert evaluate(config, wd)["held_out_loss"] == r["eval"][4]


def _names_and_keys(path) -> set:
    """Every identifier and every string literal that is a bare word, in a source file."""
    out = set()
    with open(path) as f:
        for tok in tokenize.generate_tokens(f.readline):
            if tok.type == tokenize.NAME:
                out.add(tok.string)
            elif tok.type == tokenize.STRING and re.fullmatch(r"[rbuRBU]?['\"]\w+['\"]",
                                                                tok.string):
                out.add(tok.string.strip("rbuRBU'\""))
    return out


def test_training_system_never_asks_which_task():
    # no ``config.get('msdiff')``, ``exp.msdiff`` or ``import msdiff`` branches left
    for rel in ("jaxdiff/train/loop.py", "jaxdiff/train/evaluate.py", "jaxdiff/train/step.py",
                "jaxdiff/train/experiment.py", "launch/main.py"):
        words = _names_and_keys(ROOT / rel)
        assert not {w for w in words if "msdiff" in w.lower()}, rel


def test_train_refuses_a_config_naming_the_task_entry_point(example, tmp_path):
    from jaxdiff.train import train as train_task
    with pytest.raises(TypeError, match=r"jaxdiff\.tasks\.train\(config, workdir\)"):
        train_task(example["toy_config"](), str(tmp_path))
