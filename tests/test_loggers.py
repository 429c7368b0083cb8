"""TensorBoard and MLflow beside the CSV logs (configs/loggers/*.yaml, mmrope.train.loggers): a few steps of the debug
run with each, and what was written read back with the trackers' own readers: the curves, the validation scores, the
resolved config and the tags the ablation gives each run."""

import csv
import json
import multiprocessing
import sys
from pathlib import Path
from unittest import mock

import pytest

from mmrope.train import cli as train
from mmrope.train.loggers import LoggingConfig, run_loggers

ROOT = Path(__file__).resolve().parents[1]
TAGS = {"arm": "rope2d-mrope", "seed": 0}


def fit(root: Path, *extra: str) -> None:
    args = ["fit", "--config", str(ROOT / "configs/debug.yaml"), f"--trainer.default_root_dir={root}",
            "--trainer.max_steps=4", "--trainer.val_check_interval=2", "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--data.batch_size=8",
            "--data.shapes.n_val=4", "--model.max_new_tokens=4", f"--logging.tags={json.dumps(TAGS)}", *extra]
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        assert train.main(args) == 0


def csv_series(root: Path, name: str) -> list[tuple[int, float]]:
    """(step, value) of one metric in the run's metrics.csv, which the trackers must agree with."""
    rows = csv.DictReader((root / "logs" / "version_0" / "metrics.csv").open())
    return [(int(r["step"]), float(r[name])) for r in rows if r.get(name)]


def test_tensorboard_reads_back_the_curves_scores_config_and_tags(tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard is not installed: pip install -e '.[loggers]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util.tensor_util import make_ndarray

    fit(tmp_path, "--config", str(ROOT / "configs/loggers/tensorboard.yaml"))
    folder = tmp_path / "logs" / "version_0"
    events = list(folder.glob("events.out.tfevents.*"))
    assert len(events) == 1 and (folder / "metrics.csv").is_file() and (folder / "curves.png").is_file()
    reader = EventAccumulator(str(events[0]))
    reader.Reload()
    for name in ("train/loss", "val/loss", "val/attribute", "val/cider"):
        logged = [(e.step, e.value) for e in reader.Scalars(name)]
        assert logged == pytest.approx(csv_series(tmp_path, name)), name
    assert len(reader.Scalars("val/attribute")) == 2 and len(reader.Scalars("train/loss")) == 4
    start = plugin_data_pb2.HParamsPluginData.FromString(
        reader.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info.hparams
    assert start["model.vision.pos_encoding"].string_value == "rope2d"
    assert start["trainer.max_steps"].number_value == 4 and start["data.shapes.n_val"].number_value == 4
    assert start["logging.tags.arm"].string_value == "rope2d-mrope" and start["logging.tags.seed"].number_value == 0
    text = {tag: make_ndarray(reader.Tensors(tag)[0].tensor_proto).item().decode()
            for tag in ("config/text_summary", "tags/text_summary")}
    assert text["tags/text_summary"] == "arm=rope2d-mrope seed=0"
    assert "    model:\n" in text["config/text_summary"] and "pos_encoding: rope2d" in text["config/text_summary"]


def test_mlflow_reads_back_the_curves_scores_config_and_tags(tmp_path):
    pytest.importorskip("mlflow", reason="MLflow is not installed: pip install -e '.[loggers]' (or mlflow-skinny)")
    pytest.importorskip("sqlalchemy", reason="a sqlite:/// MLflow store needs sqlalchemy and alembic")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    fit(tmp_path, "--config", str(ROOT / "configs/loggers/mlflow.yaml"), f"--logging.mlflow={uri}",
        "--logging.tensorboard=false")
    assert not list((tmp_path / "logs" / "version_0").glob("events.*"))  # TensorBoard off when asked
    assert (tmp_path / "logs" / "version_0" / "metrics.csv").is_file()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("mmrope").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "arm=rope2d-mrope seed=0"
    assert run.data.tags["arm"] == "rope2d-mrope" and run.data.tags["seed"] == "0"
    params = run.data.params
    assert params["model.vision.pos_encoding"] == "rope2d" and params["model.position_scheme"] == "mrope_interleaved"
    assert params["trainer.max_steps"] == "4" and params["logging.tags.arm"] == "rope2d-mrope"
    for name in ("train/loss", "val/loss", "val/attribute", "val/cider"):
        logged = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
        assert sorted(logged) == pytest.approx(csv_series(tmp_path, name)), name


def _open_store(uri: str, queue) -> None:
    try:
        logger = run_loggers(_run_root(uri), LoggingConfig(tensorboard=False, mlflow=uri))[1]
        logger.log_metrics({"x": 1.0}, step=0)
        queue.put("ok")
    except Exception as e:  # noqa: BLE001 - reported to the test
        queue.put(f"{type(e).__name__}: {e}")


def _run_root(uri: str) -> str:
    return str(Path(uri.removeprefix("sqlite:///")).parent / "run")


def test_runs_started_at_once_share_a_new_mlflow_store(tmp_path):
    """The ablation's parallel runs: a new SQLite store is made once, not by every run together (which breaks it)."""
    pytest.importorskip("mlflow", reason="MLflow is not installed: pip install -e '.[loggers]' (or mlflow-skinny)")
    pytest.importorskip("sqlalchemy", reason="a sqlite:/// MLflow store needs sqlalchemy and alembic")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_open_store, args=(uri, queue)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert sorted(queue.get(timeout=5) for _ in workers) == ["ok"] * 3
    client = MlflowClient(uri)
    assert len(client.search_runs([client.get_experiment_by_name("mmrope").experiment_id])) == 3


def test_a_tracker_that_is_not_installed_is_one_line(tmp_path, capsys):
    with mock.patch.dict(sys.modules, {"tensorboard": None, "mlflow": None, "mlflow.exceptions": None,
                                       "mlflow.tracking": None}):
        with pytest.raises(ValueError, match=r"^logging.mlflow needs MLflow: pip install 'mmrope\[loggers\]'"):
            run_loggers(tmp_path, LoggingConfig(tensorboard=False, mlflow="sqlite:///x.db"))
        assert len(run_loggers(tmp_path, LoggingConfig())) == 1  # TensorBoard when installed: here, not
        with mock.patch.object(sys, "argv", sys.argv[:1]):
            code = train.main(["fit", "--config", str(ROOT / "configs/debug.yaml"), "--config",
                               str(ROOT / "configs/loggers/tensorboard.yaml"),
                               f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=1"])
    assert code == 1
    assert capsys.readouterr().err.endswith("mmrope train: error: logging.tensorboard: true needs the tensorboard "
                                            "package: pip install 'mmrope[loggers]'\n")


def test_the_ablation_tags_each_run_with_its_arm_and_seed(tmp_path):
    from mmrope.ablation.plan import load_plan, train_args
    from mmrope.train.config_reader import read_config

    args = train_args(load_plan(ROOT / "configs/ablation/shapes.yaml", "cpu"), "rope1d_flat", "flat", 2, tmp_path)
    assert f"--logging.tags={json.dumps({'arm': 'rope1d_flat-flat', 'seed': 2})}" in args
    assert read_config(args[1:])["logging"]["tags"] == {"arm": "rope1d_flat-flat", "seed": 2}
    for snippet in ("tensorboard", "mlflow"):  # each parses after a recipe, and leaves the CSV logger alone
        config = read_config(["--config", str(ROOT / "configs/debug.yaml"), "--config",
                              str(ROOT / f"configs/loggers/{snippet}.yaml")])
        assert config["trainer"]["logger"] is None and config["logging"][snippet]


@pytest.mark.parametrize(("setting", "message"), [
    ("--logging.tags={\"\": 1}", "logging.tags: '': 1: expected names with a string or number each"),
    ("--logging.mlflow= ", "logging.mlflow=' ': expected an MLflow tracking URI such as sqlite:///mlflow.db, or null"),
    ("--logging.mlflow=sqlite:///TMP/file/mlflow.db", "/file/mlflow.db: cannot open the store ("),
])
def test_bad_logging_settings_are_one_line(tmp_path, capsys, setting, message):
    if "sqlite" in setting:
        pytest.importorskip("mlflow", reason="MLflow is not installed: pip install -e '.[loggers]'")
    (tmp_path / "file").write_text("")
    setting = setting.replace("TMP", str(tmp_path))
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        assert train.main(["fit", "--config", str(ROOT / "configs/debug.yaml"), setting,
                           f"--trainer.default_root_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
