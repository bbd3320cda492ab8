"""A newly promoted model, loaded by every router replica without a restart and without failing a request.

``python -m training learn`` promotes a model by rewriting its registry's ``current``
file (``predictor.serving.loader.resolve``); ``rollback`` does the same the other
way. Each replica looks at that file every ``predictor.reload_s`` seconds. When it
names another version, the replica loads it off the event loop, checks that it
fits this router (trained at the top-k the stages are asked for), and only then hands it to the engine (``CascadeEngine.use_predictor``)
with its calibration table (tenants' quality targets). A request in flight keeps
the model it started with for the steps it has already taken; nothing is torn
down under it. A version that fails to load or to fit is logged and counted once,
and the model in service stays until the registry names another version.

The version in service's calibration table is watched too: ``python -m training
calibrate --model <its directory>`` rewrites it in place (a new target, another
``cascade.cost_unit``), and a replica that read it only at start-up would keep
the old λ while a restarted one serves the new: each replica reads the table
again when its file changes (``outcome="table"``); one that does not parse
leaves the old table in force (``outcome="failed"``).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from common.settings import Settings
from predictor.serving.calibration import CALIBRATION_FILE, LambdaTable
from predictor.serving.interface import Predictor
from predictor.serving.loader import PredictorLoadError, baseline_predictor, model_dir, model_version, watched
from predictor.serving.runtime import OnnxPredictor
from router.cascade import CascadeEngine
from router.metrics import PREDICTOR_INFO, PREDICTOR_RELOADS
from router.targets import TargetLambdas

log = logging.getLogger("adaptive_sd.router.model_reload")


class ModelReloader:
    """Watches the configured model registry for this replica (module docstring)."""

    def __init__(self, settings: Settings, engine: CascadeEngine, targets: TargetLambdas, loaded: Path | None) -> None:
        """``loaded``: the directory of the model the engine serves (None: the baseline), as it was read for it."""
        self.settings = settings
        self.engine = engine
        self.targets = targets
        self.interval_s = settings.predictor.reload_s
        self.loaded = loaded
        self._task: asyncio.Task[None] | None = None
        self._refused: Path | None = None  # the version that failed to load: not retried until the registry names another
        self._table_read = _stamp(loaded)  # the table file of the version in service, as last read
        self._publish()

    @property
    def version(self) -> str:
        """The model in service: its registry version or directory name; ``builtin`` for the baseline."""
        return model_version(self.loaded) if self.loaded is not None else "builtin"

    def _publish(self) -> None:
        """``adaptive_sd_predictor_info``: one series, the model in service."""
        PREDICTOR_INFO.clear()
        PREDICTOR_INFO.labels(self.engine.predictor.name, self.version, str(self.engine.predictor.trained).lower()).set(1)

    def start(self) -> None:
        """Begin watching (nothing to watch without ``predictor.path``, or with ``reload_s`` 0; a baseline with a
        path watches for the registry's first version)."""
        if watched(self.settings):
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check()

    async def check(self) -> bool:
        """Load the version the registry names now if it is not the one in service; True when it was swapped in."""
        try:
            directory = model_dir(self.settings)
        except PredictorLoadError as exc:
            return self._failed(f"registry unreadable: {exc}")
        if directory is None and self.loaded is not None and self.settings.predictor.kind == "baseline":
            return self._use(baseline_predictor(self.settings), None, None)  # rolled back to no version
        if directory is not None and directory == self.loaded:
            return self._table_changed(directory)
        if directory is None or directory == self._refused:
            return False
        try:
            predictor, table = await asyncio.to_thread(self._load, directory)
        except Exception as exc:  # a broken or incompatible version must never stop the replica
            self._refused = directory
            return self._failed(f"{directory}: {type(exc).__name__}: {exc}")
        return self._use(predictor, table, directory)

    def _table_changed(self, directory: Path) -> bool:
        """Read the version in service's table again if its file changed since it was read (module docstring)."""
        stamp = _stamp(directory)
        if stamp == self._table_read:
            return False
        self._table_read = stamp
        try:
            table = LambdaTable.load(directory)
        except Exception as exc:  # a table half written or broken: the one in force stays
            return self._failed(f"{directory / CALIBRATION_FILE}: {type(exc).__name__}: {exc}")
        self.targets.use(table)
        PREDICTOR_RELOADS.labels("table").inc()
        log.info("calibration table of model %s read again (%s)", self.version, "removed" if table is None else "changed")
        return True

    def _use(self, predictor: Predictor, table: LambdaTable | None, directory: Path | None) -> bool:
        self.engine.use_predictor(predictor)
        self.targets.use(table)
        self.loaded, self._refused, self._table_read = directory, None, _stamp(directory)
        self._publish()
        PREDICTOR_RELOADS.labels("loaded").inc()
        log.info("model %s (%s) in service", self.version, directory or "the baseline")
        return True

    def _load(self, directory: Path) -> tuple[Predictor, LambdaTable | None]:
        predictor = OnnxPredictor.load(directory, evidence=self.settings.cascade.risk.evidence)
        if predictor.top_k != self.engine.top_k:
            raise PredictorLoadError(f"trained at top-k {predictor.top_k}, the stages are asked for {self.engine.top_k}")
        return predictor, LambdaTable.load(directory)

    def _failed(self, why: str) -> bool:
        PREDICTOR_RELOADS.labels("failed").inc()
        log.warning("model not reloaded, %s in service stays: %s", self.version, why)
        return False


def _stamp(directory: Path | None) -> tuple[int, int] | None:
    """When and how large a model directory's calibration table file is; None where it has none."""
    try:
        stat = (directory / CALIBRATION_FILE).stat() if directory is not None else None
    except OSError:
        return None
    return None if stat is None else (stat.st_mtime_ns, stat.st_size)
