"""What the ablation page shows of single scenes: every arm's caption of every scene at a scored point, a scene as
the runs were scored on it (a PNG), and the inspector, one scene through two arms' ``last.ckpt`` at the training size
and off it (:func:`mmrope.serve.explain.explain`). Scenes are re-drawn from the grid's evaluation sets: scene i of
``predictions.csv`` is ``eval_set.scenes[i]``. What a client names is checked by the folder
(:class:`mmrope.serve.ablation.AblationFolder`) before anything is read.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

import numpy as np

from mmrope.serve.ablation import MAX_ROWS, AblationFolder, NotThere, row_point, score_of
from mmrope.serve.local_server import PipelineCache


class AblationScenes:
    """The scenes of one folder: evaluation sets and drawn scenes cached (a few points kept), models loaded through
    ``pipelines`` (the server runs one at a time)."""

    def __init__(self, folder: AblationFolder):
        self.folder = folder
        self.pipelines = PipelineCache(folder.device, keep=4)  # two arms at a time, and the two before
        self.lock = threading.RLock()  # guards the caches below; requests come from several threads
        self.eval_sets: dict = {}
        self.media: OrderedDict = OrderedDict()  # (split, protocol, size, frames) -> the drawn scenes, a few kept

    def scenes(self, point: tuple, seed: int, show: str = "all") -> dict:
        """Every scene at ``point``: its reference caption and what each arm's ``seed`` wrote, with its headline
        score; ``show`` keeps ``all``, the scenes an arm got ``wrong:<arm>`` or ``right:<arm>``, or those the arms
        ``disagree`` on. At most :data:`MAX_ROWS` rows, the rest counted."""
        plan, runs = self.folder.plan, self.folder.read_runs()
        kind, _, which = show.partition(":")
        if kind not in ("all", "wrong", "right", "disagree") or (kind in ("wrong", "right")) != bool(which):
            raise ValueError(f"show {show[:80]!r}: expected all, disagree, wrong:<arm> or right:<arm>")
        if which:
            self.folder.arm(which)
        written = {}
        for arm in self.folder.arms:
            rows = runs.get((arm, seed), [])
            written[arm] = {int(r["index"]): r for r in rows if row_point(r) == point and r.get("index", "").isdigit()}
        references = self.eval_set(point[0], point[1]).references
        listed, counts = [], {arm: {"right": 0, "wrong": 0} for arm in self.folder.arms}
        for i in range(plan.n):
            arms = {}
            for arm in self.folder.arms:
                row = written[arm].get(i)
                if row is None:
                    continue
                score = score_of(row.get(plan.metric))
                arms[arm] = {"prediction": row.get("prediction", ""), "score": score}
                if score is not None:
                    counts[arm]["right" if score >= 0.5 else "wrong"] += 1
            outcomes = {a: v["score"] >= 0.5 for a, v in arms.items() if v["score"] is not None}
            keep = {"all": bool(arms), "disagree": len(set(outcomes.values())) > 1,
                    "wrong": outcomes.get(which) is False, "right": outcomes.get(which) is True}[kind]
            if keep:
                listed.append({"index": i, "reference": references[i][0] if references[i] else "", "arms": arms})
        return {"point": self.folder.point_json(*point[1:]), "split": point[0], "seed": seed, "show": show,
                "metric": plan.metric, "counts": counts, "total": len(listed), "rows": listed[:MAX_ROWS]}

    def eval_set(self, split: str, protocol: str):
        from mmrope.eval.evaluation import data_set

        with self.lock:
            if (split, protocol) not in self.eval_sets:
                plan = self.folder.plan
                self.eval_sets[split, protocol] = data_set(plan.data, split, n=plan.n, protocol=protocol)
            return self.eval_sets[split, protocol]

    def drawn(self, point: tuple) -> list:
        """The point's scenes as the runs were scored on them (PIL images, or clips), the last few points kept."""
        split, protocol, factor, frames = point
        key = (split, protocol, round(factor * self.folder.plan.train_size), frames)
        with self.lock:
            if key not in self.media:
                self.media[key] = self.eval_set(split, protocol).images(key[2], frames)
                while len(self.media) > 6:
                    self.media.popitem(last=False)
            self.media.move_to_end(key)
            return self.media[key]

    def image(self, point: tuple, index: int) -> bytes:
        """Scene ``index`` at ``point`` as a PNG, enlarged by a whole factor (a clip: its frames side by side)."""
        from PIL import Image

        from mmrope.serve.explain import strip

        picture = self.drawn(point)[index]
        frames = getattr(picture, "frames", [picture])
        pixels = strip([np.asarray(f.convert("RGB"), dtype=np.float64) / 255 for f in frames])
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
        return buffer.getvalue()

    def inspect(self, arms: list[str], seed: int, index: int, off: tuple) -> dict:
        """Scene ``index`` of ``off``'s split, for each arm's ``seed``: the caption, attention per word and (t, h, w)
        ids (:func:`mmrope.serve.explain.explain`) at the training size and at ``off``, beside the caption
        predictions.csv holds. Loads the runs' last.ckpt: the server calls it one at a time."""
        from mmrope.serve.explain import explain

        plan = self.folder.plan
        train = (off[0], "scaled", 1.0, plan.train_frames)
        points = [train] + ([off] if off != train else [])
        checkpoints = {}
        for arm in arms:
            path = self.folder.file(arm, seed, "checkpoints", "last.ckpt")
            if not path.is_file():
                raise NotThere(f"{arm} seed {seed} has no checkpoints/last.ckpt (not trained yet)")
            checkpoints[arm] = path
        runs, panels = self.folder.read_runs(), []
        for arm in arms:
            pipeline = self.pipelines.get(checkpoints[arm])
            written = {row_point(r): r for r in runs.get((arm, seed), []) if r.get("index") == str(index)}
            for point in points:
                eval_set = self.eval_set(point[0], point[1])
                answer = explain(pipeline, self.drawn(point)[index], num_beams=1, max_new_tokens=plan.max_new_tokens,
                                 size=round(point[2] * plan.train_size), clip_mode=plan.clip_mode)
                score = None
                if eval_set.scenes is not None and eval_set.accuracies is not None:
                    scores = eval_set.accuracies([answer["caption"]], [eval_set.scenes[index]])
                    score = score_of(scores.get(plan.metric))
                row = written.get(point)
                panels.append({"arm": arm, "point": self.folder.point_json(*point[1:]), "caption": answer["caption"],
                               "score": score, "written": row.get("prediction") if row else None,
                               **{k: answer[k] for k in ("image", "words", "ids", "size", "scheme", "pos_encoding",
                                                         "kind", "frames")}})
        references = self.eval_set(off[0], off[1]).references[index]
        return {"split": off[0], "index": index, "seed": seed, "metric": plan.metric,
                "reference": references[0] if references else "", "panels": panels}
