"""A grid file and one of its presets, resolved into the runs of an ablation: which arms, seeds and steps, and how
each run is scored. The grid format is documented in ``configs/ablation/shapes.yaml``.

An arm is an (encoder ``pos_encoding``, decoder ``position_scheme``) pair, named ``<encoder>-<scheme>``; the names a
grid may use are the model's registries (:data:`mmrope.model.pos_encodings.ENCODERS`,
:data:`mmrope.model.decoder_schemes.SCHEMES`). The base config and the preset's ``train`` overrides are resolved
the way ``python -m mmrope.train`` resolves them (:func:`mmrope.train.config_reader.read_config`), so the scenes each
run is scored on are the ones it trained on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from mmrope.errors import one_line
from mmrope.model.registry import PLUGINS_HINT

PRESET_KEYS = ("base", "arms", "encoders", "schemes", "seeds", "max_steps", "eval", "train", "engine", "engine_options",
               "parallel", "compare", "threshold", "looks")
ENGINES = ("lightning", "stacked")  # one train.py process per run, or each arm's seeds in one mmrope.train.stacked
ENGINE_OPTIONS = ("stack", "renderer", "compile", "save_steps")  # mmrope.train.stacked's options
EVAL_KEYS = ("splits", "factors", "sizes", "frames", "n", "batch_size", "max_new_tokens", "protocols")
COMPARE_KEYS = ("arms", "minus", "split", "factor", "size", "protocol", "frames", "metric")
SPLITS = ("val", "test", "compositional")
ALPHA = 0.05  # the chance of a false difference every preset's stated comparisons, all looks together, are held to


@dataclass(frozen=True)
class Comparison:
    """A comparison stated in advance: arm ``a`` against arm ``b`` on ``metric`` (None: the headline), at one split,
    factor of the training size and size protocol, tested on the (seed, scene) pairs both arms were scored on.

    With ``minus`` (two more arms ``c, d``) it is an interaction: does ``a - b`` differ from ``c - d``? (e.g. what 2D
    RoPE adds over no positions under one decoder against what it adds under another), tested on the per-pair
    contrast ``(a - b) - (c - d)``."""

    a: str
    b: str
    split: str
    factor: float = 1.0
    protocol: str = "scaled"
    frames: int | None = None  # clip grids: the frame count (None: the training count)
    metric: str | None = None
    minus: tuple[str, str] | None = None

    @property
    def sides(self) -> tuple[str, str]:
        """What is compared, as the tables name it: two arms, or an interaction's two differences."""
        return (self.a, self.b) if self.minus is None else (f"{self.a} - {self.b}", " - ".join(self.minus))

    @property
    def arms(self) -> tuple[str, ...]:
        return (self.a, self.b) + (self.minus or ())

    @property
    def where(self) -> str:
        at = f"{self.split}, {self.factor:.3g}x" + ("" if self.protocol == "scaled" else f" {self.protocol}")
        return at + (f", {self.frames} frames" if self.frames else "")


@dataclass
class Plan:
    """One preset of a grid file, resolved: what to train, how long, and how to score it."""

    grid: Path
    preset: str
    base: Path
    arms: list[tuple[str, str]]  # (encoder, scheme)
    seeds: list[int]
    max_steps: int
    train: dict[str, Any]  # dotted train keys added to every run
    splits: list[str]
    factors: list[float]
    n: int
    batch_size: int
    max_new_tokens: int
    train_size: int  # model.vision.image_size of the base config
    frames: list[int] | None = None  # clip grids: the frame counts each run is scored at; None for images
    clip_mode: str = "block"  # clip grids: data.clips.clip_mode of every run (a train override)
    train_frames: int | None = None  # clip grids: data.clips.frames of the base config
    metric: str = "relation"  # the headline accuracy of the base config's benchmark (place at shapes level 1)
    data: dict | None = None  # the resolved data section every run trains on (base config + train overrides)
    engine: str = "lightning"  # how runs train: ENGINES
    engine_options: dict | None = None  # stacked engine: its options (ENGINE_OPTIONS)
    parallel: int = 1  # runs (stacked engine: arms) trained at once, each in its own processes
    protocols: list[str] = field(default_factory=lambda: ["scaled"])  # shapes: how scenes are shown off-size
    comparisons: list[Comparison] = field(default_factory=list)  # stated in advance, tested together (Holm)
    threshold: float | None = None  # learning curves: the headline accuracy whose first crossing is reported
    looks: int = 1  # times the comparisons were read, seeds added after every look but the last

    @property
    def level(self) -> float:
        """The level each stated comparison is tested at: ALPHA over the looks (Bonferroni), so that seeds added
        after a look that left a comparison open do not raise the chance of a false difference."""
        return ALPHA / self.looks

    @property
    def scored(self) -> list[tuple[str, float]]:
        """Every (protocol, factor) each run is scored at: "scaled" at every factor, the others off the training
        size only (at 1x they are the same pictures), "anchored" only on larger canvases."""
        return [(p, f) for p in self.protocols for f in self.factors
                if p == "scaled" or (f != 1 and (p != "anchored" or f > 1))]

    @property
    def points(self) -> list[tuple[float, int | None]]:
        """Every (factor, frames) each run is scored at, in table order."""
        return [(f, n) for f in self.factors for n in (self.frames or [None])]

    @property
    def sizes(self) -> list[int]:
        return [round(f * self.train_size) for f in self.factors]

    @property
    def trained_sizes(self) -> list[int]:
        """The canvases training scenes are drawn at: ``data.shapes.train_sizes`` where a run trains on several
        (each scene at one), else the one training size (1x)."""
        shapes = (self.data or {}).get("shapes") or {}
        return sorted(shapes.get("train_sizes") or [self.train_size])

    @property
    def label(self) -> str:
        """What the headline metric is called in tables, plots and file names."""
        return self.metric

    def eval_settings(self) -> dict:
        clips = {} if self.frames is None else {"frames": self.frames, "clip_mode": self.clip_mode}
        protocols = {} if self.protocols == ["scaled"] else {"protocols": self.protocols}
        return {"splits": self.splits, "factors": self.factors, "sizes": self.sizes, **clips, **protocols,
                "n": self.n, "max_new_tokens": self.max_new_tokens, "data": str(self.base), "per_scene": True}


def arm_name(encoder: str, scheme: str) -> str:
    return f"{encoder}-{scheme}"


def load_plan(grid: str | Path, preset: str = "cpu", seeds: int | None = None, max_steps: int | None = None,
              arms: list[str] | None = None) -> Plan:
    """Read ``grid`` (see configs/ablation/shapes.yaml) and resolve ``preset``; ``seeds``, ``max_steps`` and
    ``arms`` (names such as ``rope2d-mrope``, any pair of the grid) override the file."""
    import yaml

    from mmrope.model.decoder_schemes import SCHEMES
    from mmrope.model.pos_encodings import ENCODERS
    from mmrope.resources import find_config
    from mmrope.train.config_reader import read_config

    grid = find_config(grid)
    try:
        spec = yaml.safe_load(grid.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{grid}: cannot read the ablation grid ({one_line(e, 200)})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("presets"), dict):
        raise ValueError(f"{grid}: not an ablation grid: expected a mapping with encoders, schemes, eval and presets")
    if preset not in spec["presets"]:
        raise ValueError(f"{grid}: no preset {preset!r}: expected one of {', '.join(spec['presets'])}")
    p = spec["presets"][preset] or {}
    _check_keys(p, PRESET_KEYS, f"{grid}: presets.{preset}")
    encoders = _names(spec.get("encoders"), ENCODERS, f"{grid}: encoders")
    schemes = _names(spec.get("schemes"), SCHEMES, f"{grid}: schemes")

    chosen = arms is not None  # on the command line: comparisons of arms left out are dropped, not refused
    if isinstance(p.get("arms"), dict):  # a star: every registered encoder and every registered scheme
        star = _star(p["arms"], ENCODERS, SCHEMES, f"{grid}: presets.{preset}.arms")
        encoders += [e for e, _ in star if e not in encoders]
        schemes += [s for _, s in star if s not in schemes]
        if arms is None:
            arms = [arm_name(e, s) for e, s in star]
    if arms is None and p.get("arms") is not None:
        arms = p["arms"]
    if arms is not None:
        pairs = [_parse_arm(a, encoders, schemes, grid) for a in arms]
    else:
        pairs = list(product(_names(p.get("encoders", encoders), ENCODERS, f"{grid}: presets.{preset}.encoders"),
                             _names(p.get("schemes", schemes), SCHEMES, f"{grid}: presets.{preset}.schemes")))
    pairs = list(dict.fromkeys(pairs))  # an arm named twice would count its seeds twice
    if not pairs:
        raise ValueError(f"{grid}: presets.{preset} has no arms")

    n_seeds = _positive(seeds if seeds is not None else p.get("seeds", spec.get("seeds", 1)), "seeds", grid)
    steps = _positive(max_steps if max_steps is not None else p.get("max_steps"), "max_steps", grid)
    _check_keys(spec.get("eval") or {}, EVAL_KEYS, f"{grid}: eval")
    _check_keys(p.get("eval") or {}, EVAL_KEYS, f"{grid}: presets.{preset}.eval")
    ev = {**(spec.get("eval") or {}), **(p.get("eval") or {})}
    splits = list(ev.get("splits", ["test", "compositional"]))
    if not splits or any(s not in SPLITS for s in splits):
        raise ValueError(f"{grid}: eval.splits={splits}: expected some of {', '.join(SPLITS)}")
    if "sizes" in ev and "factors" in (p.get("eval") or {}):
        raise ValueError(f"{grid}: presets.{preset}.eval gives factors and the grid's eval sizes: give one")
    factors = [float(f) for f in ev.get("factors", [1])] if "sizes" not in ev else None
    if factors is not None and (not factors or any(f <= 0 for f in factors)):
        raise ValueError(f"{grid}: eval.factors={factors}: expected positive factors of the training size")

    base = Path(os.path.normpath(grid.parent / (p.get("base") or "")))  # relative to the grid: a wheel's grids too
    if not base.is_file():
        raise ValueError(f"{grid}: presets.{preset}.base={p.get('base')!r} is not a file (relative paths are read "
                         f"from the grid's folder, {grid.parent})")
    train = p.get("train") or {}
    if not isinstance(train, dict):
        raise ValueError(f"{grid}: presets.{preset}.train must be a mapping of train keys to values")
    resolved = read_config(["--config", str(base), *override_args(train)])
    vision, data = resolved["model"]["vision"], resolved["data"]
    from mmrope.benchmarks import benchmark_of

    benchmark = benchmark_of(data)
    frames = None
    if benchmark.frames is not None:
        frames = [int(f) for f in ev.get("frames", [benchmark.frames])]
        if any(f < 2 for f in frames):
            raise ValueError(f"{grid}: eval.frames={frames}: expected frame counts of at least 2")
    elif "frames" in ev:
        raise ValueError(f"{grid}: eval.frames is for clip grids, but {base} trains on {benchmark.name}")
    size, window = int(vision["image_size"]), int(vision["patch_size"]) * int(vision["spatial_merge_size"])
    if factors is None:  # sizes in pixels (a training size of 48 has no round factor for 32)
        sizes = [int(z) for z in ev["sizes"]]
        if not sizes or any(z <= 0 or z % window for z in sizes):
            raise ValueError(f"{grid}: eval.sizes={sizes}: expected positive multiples of patch_size * "
                             f"spatial_merge_size = {window}")
        factors = [z / size for z in sizes]
    for f in factors:
        if abs(f * size - round(f * size)) > 1e-9 or round(f * size) % window:
            raise ValueError(f"{grid}: eval factor {f:g} of the training size {size} gives {f * size:g} px, not a "
                             f"multiple of patch_size * spatial_merge_size = {window}")
    n, batch_size, max_new_tokens = (_positive(ev.get(k, default), f"eval.{k}", grid)
                                     for k, default in (("n", 500), ("batch_size", 100), ("max_new_tokens", 12)))
    from mmrope.data.shapes import SIZE_PROTOCOLS

    protocols = list(ev.get("protocols", ["scaled"]))
    if not protocols or any(x not in SIZE_PROTOCOLS for x in protocols) or (protocols != ["scaled"] and frames):
        raise ValueError(f"{grid}: eval.protocols={protocols}: expected some of {', '.join(SIZE_PROTOCOLS)} "
                         "(shapes grids only)")
    engine, engine_options, parallel = _engine(p, f"{grid}: presets.{preset}")
    plan = Plan(grid, preset, base, pairs, list(range(n_seeds)), steps, train, splits, factors, n, batch_size,
                max_new_tokens, size, frames, benchmark.clip_mode, benchmark.frames, benchmark.metric, data, engine,
                engine_options, parallel, protocols)
    plan.comparisons = _comparisons(p.get("compare") or [], plan, f"{grid}: presets.{preset}.compare",
                                    chosen=chosen)
    threshold = p.get("threshold")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 < threshold <= 1):
        raise ValueError(f"{grid}: presets.{preset}.threshold={threshold!r}: expected an accuracy in (0, 1]")
    plan.threshold = threshold
    plan.looks = _positive(p.get("looks", 1), f"presets.{preset}.looks", grid)
    return plan


def _comparisons(specs: Any, plan: Plan, where: str, chosen: bool = False) -> list[Comparison]:
    """A preset's ``compare`` list: each ``[arm, arm]`` (at the first split, 1x, scaled) or ``{arms: [arm, arm],
    minus: [arm, arm], split, factor | size, protocol, frames, metric}`` (``minus``: an interaction, the first
    pair's difference against the second's); every arm must be in the plan and the point scored. With arms
    ``chosen`` on the command line, comparisons of arms left out are dropped."""
    if not isinstance(specs, list):
        raise ValueError(f"{where} must be a list of comparisons, [arm, arm] or {{arms: [arm, arm], factor: ...}}")
    names = [arm_name(e, s) for e, s in plan.arms]
    out = []
    for i, spec in enumerate(specs):
        spec = {"arms": spec} if isinstance(spec, list) else spec
        _check_keys(spec, COMPARE_KEYS, f"{where}[{i}]")
        pairs = [("arms", spec.get("arms"))] + ([("minus", spec["minus"])] if "minus" in spec else [])
        if chosen and any(isinstance(v, list) and not all(a in names for a in v) for _, v in pairs):
            continue
        for key, arms in pairs:
            if not (isinstance(arms, list) and len(arms) == 2 and all(a in names for a in arms)
                    and arms[0] != arms[1]):
                raise ValueError(f"{where}[{i}]: {key}={arms!r}: expected two different arms of the preset "
                                 f"({', '.join(names)})")
        arms, minus = pairs[0][1], tuple(pairs[1][1]) if len(pairs) > 1 else None
        if minus is not None and set(minus) == set(arms):
            raise ValueError(f"{where}[{i}]: minus={list(minus)!r}: an interaction needs another pair of arms than "
                             f"arms={arms!r}")
        frames = spec.get("frames", plan.train_frames)
        factor = spec["size"] / plan.train_size if "size" in spec else float(spec.get("factor", 1))
        factor = next((f for f in plan.factors if abs(f - factor) < 1e-9), factor)  # the plan's own float
        c = Comparison(arms[0], arms[1], spec.get("split", plan.splits[0]), factor,
                       spec.get("protocol", "scaled"), frames, spec.get("metric"), minus)
        if c.split not in plan.splits or (c.protocol, c.factor) not in plan.scored or (
                c.frames not in (plan.frames or [None])):
            raise ValueError(f"{where}[{i}]: {c.where} is not scored by the preset (splits {plan.splits}, "
                             f"factors {plan.factors}, protocols {plan.protocols}, frames {plan.frames})")
        out.append(c)
    return out


def _engine(p: dict, where: str) -> tuple[str, dict, int]:
    """A preset's ``engine``, ``engine_options`` and ``parallel``, checked."""
    engine = p.get("engine", "lightning")
    if engine not in ENGINES:
        raise ValueError(f"{where}.engine={engine!r} is unknown: expected one of {', '.join(ENGINES)}")
    options = p.get("engine_options") or {}
    _check_keys(options, ENGINE_OPTIONS, f"{where}.engine_options")
    if options and engine != "stacked":
        raise ValueError(f"{where}.engine_options are options of the stacked engine: add engine: stacked")
    parallel = p.get("parallel", 1)
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ValueError(f"{where}.parallel={parallel!r}: expected a positive whole number of runs trained at once")
    from mmrope.train.stacked import EngineOptions

    try:
        EngineOptions(**{k: v for k, v in options.items()})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}.engine_options: {e}") from None
    return engine, dict(options), parallel


def _star(spec: dict, encoders: dict, schemes: dict, where: str) -> list[tuple[str, str]]:
    """``{every_encoder_with_scheme: S, every_scheme_with_encoder: E, except: [...]}`` -> every registered encoder
    under scheme S, then every registered scheme under encoder E (the pair (E, S) once), leaving out ``except``:
    each arm of the registries compared on one axis, resolved when the grid is read, so an arm added later is in."""
    _check_keys(spec, ("every_encoder_with_scheme", "every_scheme_with_encoder", "except"), where)
    scheme, encoder = spec.get("every_encoder_with_scheme"), spec.get("every_scheme_with_encoder")
    if scheme not in schemes or encoder not in encoders:
        raise ValueError(f"{where}: every_encoder_with_scheme={scheme!r} and every_scheme_with_encoder={encoder!r} "
                         f"must name a scheme of {', '.join(schemes)} and an encoder of {', '.join(encoders)}")
    skip = set(spec.get("except") or [])
    pairs = [(e, scheme) for e in encoders if e not in skip] + [(encoder, s) for s in schemes if s not in skip]
    return list(dict.fromkeys(pairs))


def _check_keys(d: Any, allowed: tuple[str, ...], where: str) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be a mapping")
    unknown = [k for k in d if k not in allowed]
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}: expected one of {', '.join(allowed)}")


def _names(values: Any, registry: dict, where: str) -> list[str]:
    allowed = tuple(registry)
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where} must be a non-empty list, some of {', '.join(allowed)}")
    for v in values:
        if v not in allowed:
            raise ValueError(f"{where}: {v!r} is unknown: expected one of {', '.join(allowed)} ({PLUGINS_HINT})")
    return list(values)


def _parse_arm(name: Any, encoders: list[str], schemes: list[str], grid: Path) -> tuple[str, str]:
    encoder, _, scheme = str(name).partition("-")
    if encoder not in encoders or scheme not in schemes:
        raise ValueError(f"arm {name!r} is not in {grid}: expected <encoder>-<scheme> with an encoder of "
                         f"{', '.join(encoders)} and a scheme of {', '.join(schemes)}")
    return encoder, scheme


def _positive(value: Any, name: str, grid: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{grid}: {name}={value!r}: expected a positive whole number")
    return value


def override_args(train: dict[str, Any]) -> list[str]:
    """A preset's ``train`` mapping as command-line overrides, ``--key=value``."""
    return [f"--{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in train.items()]


def train_args(plan: Plan, encoder: str, scheme: str, seed: int, run_dir: Path, resume: bool = False) -> list[str]:
    """The ``python -m mmrope.train`` arguments of one run (``mmrope.train.cli.main(args)`` takes them as they are)."""
    return ["fit", "--config", str(plan.base), f"--trainer.default_root_dir={run_dir}",
            f"--seed_everything={seed}", f"--data.seed={seed}", *arm_args(plan, encoder, scheme),
            f"--logging.tags={json.dumps({'arm': arm_name(encoder, scheme), 'seed': seed})}",  # trackers' run tags
            *(["--ckpt_path=last"] if resume else [])]


def arm_args(plan: Plan, encoder: str, scheme: str) -> list[str]:
    """What every run of an arm is trained with, after its base config, but its seed and folder."""
    return [f"--trainer.max_steps={plan.max_steps}", f"--model.vision.pos_encoding={encoder}",
            f"--model.position_scheme={scheme}",
            "--data.eval_sizes=[]",  # the scoring after training covers the sizes
            "--trainer.enable_progress_bar=false", *override_args(plan.train)]


def stacked_args(plan: Plan, encoder: str, scheme: str, runs: list[tuple[int, Path]], resume: bool = False
                 ) -> list[str]:
    """The ``python -m mmrope.train.stacked`` arguments that train ``runs`` (seed, folder) of an arm together:
    each run is the one :func:`train_args` describes."""
    options = plan.engine_options or {}
    flags = [f"--{k.replace('_', '-')}={','.join(map(str, v)) if isinstance(v, list) else v}"
             for k, v in options.items()]
    return [*(f"--run={seed}={run_dir}" for seed, run_dir in runs), *flags, *(["--resume"] if resume else []),
            "--", "fit", "--config", str(plan.base), *arm_args(plan, encoder, scheme)]
