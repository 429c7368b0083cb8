"""``mmrope serve --ablation OUT``'s page: it only reads one ablation folder, and answers what
:class:`~mmrope.serve.ablation.AblationFolder` reads of it (every name a client sends is checked against the grid's
plan there). What keeps it safe to run is :mod:`mmrope.serve.local_server`'s.

The ablation page:

    GET  /                    the page (ablation.html, common.js, ablation.js, style.css, ablation.css)
    GET  /api/summary         the plan, the runs scored and trained, metrics, curve series, the stated tests
    GET  /api/table?metric=M  every arm x point cell of M: mean and 95% interval
    GET  /api/curves?series=S S (val/place, train/loss, ...) against steps, per run and per arm
    GET  /api/scenes?split=&protocol=&factor=&frames=&seed=&show=all|disagree|wrong:ARM|right:ARM
                              each scene's reference and every arm's caption and score
    GET  /api/image?split=&protocol=&factor=&frames=&index=
                              one scene as the runs were scored on it, a PNG
    GET  /api/inspect?a=ARM&b=ARM&seed=&split=&index=&protocol=&factor=&frames=
                              the scene through both arms' last.ckpt, at the training size and at the point given
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from mmrope.errors import one_line
from mmrope.serve.ablation import AblationFolder, NotThere, OutsideFolder
from mmrope.serve.ablation_scenes import AblationScenes
from mmrope.serve.local_server import MAX_QUEUED, LocalServer, PageHandler

ABLATION_ASSETS = {"/": ("ablation.html", "text/html; charset=utf-8"),
                   "/ablation.js": ("ablation.js", "text/javascript; charset=utf-8"),
                   "/common.js": ("common.js", "text/javascript; charset=utf-8"),
                   "/style.css": ("style.css", "text/css; charset=utf-8"),
                   "/ablation.css": ("ablation.css", "text/css; charset=utf-8")}
MAX_REQUEST_TARGET = 2048  # characters of path and query: the ablation page's longest is a few hundred


@dataclass
class AblationSettings:
    """What ``mmrope serve --ablation``'s flags fix: the folder, its plan read (:mod:`mmrope.serve.ablation`)."""

    folder: AblationFolder
    max_queued: int = MAX_QUEUED


class AblationServer(LocalServer):
    """The ablation page: one folder, read only; one model call at a time (``lock``, the inspector), at most
    ``max_queued`` more waiting (``slots``)."""

    def __init__(self, address: tuple[str, int], settings: AblationSettings):
        self.settings, self.folder, self.scenes = settings, settings.folder, AblationScenes(settings.folder)
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(settings.max_queued + 1)
        super().__init__(address, AblationHandler, ABLATION_ASSETS)


class AblationHandler(PageHandler):
    """GET only, and no body: every question is a few names in the query, each checked against the plan by
    :class:`~mmrope.serve.ablation.AblationFolder` before a file is read; scenes and the inspector are
    :class:`~mmrope.serve.ablation_scenes.AblationScenes`'s."""

    server: AblationServer

    def do_GET(self) -> None:
        if not self._host_allowed():
            return
        if self.headers.get("Content-Length", "0").strip() not in ("", "0") or "Transfer-Encoding" in self.headers:
            self.close_connection = True  # the body is not read, so the connection cannot carry another request
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": "a request to this page carries no body"})
            return
        if len(self.path) > MAX_REQUEST_TARGET:
            self._send_json(HTTPStatus.REQUEST_URI_TOO_LONG,
                            {"error": f"a request of {len(self.path)} characters: the limit is {MAX_REQUEST_TARGET}"})
            return
        target = urlsplit(self.path)
        if self._send_asset(target.path):
            return
        answer = ABLATION_ROUTES.get(target.path)
        if answer is None:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"{target.path[:80]}: no such page"})
            return
        try:
            query = {k: v[-1] for k, v in parse_qs(target.query, keep_blank_values=True, max_num_fields=16).items()}
            body = answer(self, query)
        except OutsideFolder as e:
            self._send_json(HTTPStatus.FORBIDDEN, {"error": str(e)})
        except NotThere as e:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": str(e)})
        except ValueError as e:  # a name the plan does not hold, a checkpoint that cannot be read
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": one_line(e, 300)})
        except Busy as e:
            self._send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - the server stays up; the traceback goes to its terminal
            traceback.print_exc()
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error ({type(e).__name__})"})
        else:
            if isinstance(body, bytes):
                self._send(HTTPStatus.OK, body, "image/png")
            else:
                self._send_json(HTTPStatus.OK, body)

    def do_POST(self) -> None:
        self.close_connection = True
        self._send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "this page only reads: GET"})

    def _point(self, q: dict) -> tuple:
        return self.server.folder.point(q.get("split", ""), q.get("protocol", "scaled"), q.get("factor", "1"),
                                        q.get("frames", ""))

    def _summary(self, q: dict) -> dict:
        return self.server.folder.summary()

    def _table(self, q: dict) -> dict:
        return self.server.folder.table(q.get("metric", self.server.folder.plan.metric))

    def _curves(self, q: dict) -> dict:
        return self.server.folder.curves(q.get("series", f"val/{self.server.folder.plan.metric}"))

    def _scenes(self, q: dict) -> dict:
        folder = self.server.folder
        return self.server.scenes.scenes(self._point(q), folder.seed(q.get("seed", "0")), q.get("show", "all"))

    def _image(self, q: dict) -> bytes:
        folder = self.server.folder
        return self.server.scenes.image(self._point(q), folder.index(q.get("index", "")))

    def _inspect(self, q: dict) -> dict:
        folder = self.server.folder
        arms = list(dict.fromkeys(folder.arm(q.get(k, "")) for k in ("a", "b") if k == "a" or q.get(k)))
        seed, index, point = folder.seed(q.get("seed", "0")), folder.index(q.get("index", "")), self._point(q)
        if not self.server.slots.acquire(blocking=False):
            raise Busy(f"the server is busy ({self.server.settings.max_queued} scenes are waiting for the model); "
                       "try again in a moment")
        try:
            with self.server.lock:
                start = time.perf_counter()
                answer = self.server.scenes.inspect(arms, seed, index, point)
        finally:
            self.server.slots.release()
        return {**answer, "seconds": round(time.perf_counter() - start, 2)}


class Busy(Exception):
    """The model is in use and ``max_queued`` requests wait for it already."""


ABLATION_ROUTES = {"/api/summary": AblationHandler._summary, "/api/table": AblationHandler._table,
                   "/api/curves": AblationHandler._curves, "/api/scenes": AblationHandler._scenes,
                   "/api/image": AblationHandler._image, "/api/inspect": AblationHandler._inspect}
