"""The precision probe: which precision and memory layout train fastest here, measured, not assumed.

``train.precision: auto`` on a CPU times a few real training steps (the run's own method, backbone, batch
size and views, augmentation included) in fp32 and in bf16 autocast, each with and without channels_last,
and trains with the fastest. Why measure: bf16 autocast is ~1.3x faster than fp32 on a CPU with bf16 units
(AMD EPYC with avx512_bf16) and several times slower on one without (an Intel Xeon without them), and
channels_last helps one CPU's oneDNN kernels and not another's. On CUDA and MPS ``auto`` keeps its rule
(bf16 where the GPU has it) and nothing is timed. An explicit ``fp32`` or ``bf16`` is never overridden.

The same step times feed the budget planner (:mod:`crlf.training.budget_planner`): with ``--budget`` the chosen setting is
timed at every view size of the run even when the precision is explicit.

Answers are cached per machine in ``$CRLF_CACHE_DIR/precision_probe.json`` (default: ``$CRLF_CACHE`` or
``~/.cache/crlf``), keyed by the CPU model, thread count, torch version, method, backbone, batch size and
view size. A corrupt or foreign cache file is ignored with a warning (and rewritten), never a crash.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from crlf.config import Config
from crlf.io import atomic_write_text
from crlf.training import distributed
from crlf.training.progress import Progress

CACHE_FORMAT = "crlf-precision-probe"
CACHE_VERSION = 1
WARMUP_ROUNDS = 1  # first step of each setting: oneDNN builds its kernels
# Then the median of 2 to 4 timed rounds (each round runs every setting once, so drift hits all alike):
# a third and fourth round only while the probe has taken less than PROBE_SECONDS.
MIN_TIMED_ROUNDS, MAX_TIMED_ROUNDS, PROBE_SECONDS = 2, 4, 10.0
# A fixed cost in proportion: timing the settings may take at most this share of a run's planned steps, or
# the run keeps fp32 untimed (a 1-epoch smoke run of a few steps would otherwise wait for the probe longer
# than it trains). Counted in steps, not seconds: nothing is timed to decide whether to time.
MAX_PROBE_SHARE = 0.05

# seconds per step for each (setting, view size): what the measuring function returns
Timings = dict[str, dict[int, float]]


@dataclass(frozen=True)
class Setting:
    precision: str  # fp32 | bf16
    channels_last: bool

    @property
    def name(self) -> str:
        return self.precision + (" + channels_last" if self.channels_last else "")

    @classmethod
    def from_name(cls, name: str) -> Setting:
        return cls(name.split(" ")[0], name.endswith("channels_last"))


@dataclass(frozen=True)
class ProbeResult:
    """What the run trains with, how it was decided, and the step times behind it."""

    setting: Setting
    rule: str  # measured | cached | explicit | device rule | not timed: a short run
    timings: Timings  # setting name -> {view size: seconds per step}
    probe_s: float = 0.0  # wall time spent timing (0 when cached)

    def step_seconds(self, size: int) -> float:
        return self.timings[self.setting.name][size]

    def describe(self) -> str:
        if len(self.timings) <= 1 and self.rule not in ("measured", "cached"):
            return f"precision {self.setting.name} ({self.rule})"
        rows = "; ".join(f"{name} " + ", ".join(f"{s} px {t:.3f} s" for s, t in sorted(sizes.items()))
                         for name, sizes in self.timings.items())
        how = f"measured in {self.probe_s:.1f} s" if self.rule == "measured" else self.rule
        return f"precision: {self.setting.name} ({how}; seconds per step: {rows})"

    def record(self) -> dict:
        """Plain data for config.json, the model card and the budget plan."""
        return {"precision": self.setting.precision, "channels_last": self.setting.channels_last,
                "rule": self.rule, "probe_s": round(self.probe_s, 2),
                "seconds_per_step": {name: {str(s): round(t, 4) for s, t in sizes.items()}
                                     for name, sizes in self.timings.items()}}


def cache_file() -> Path:
    base = os.environ.get("CRLF_CACHE_DIR") or os.environ.get("CRLF_CACHE") or Path.home() / ".cache" / "crlf"
    return Path(base) / "precision_probe.json"


NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 (AVX-512 / AMX) and Arm (FEAT_BF16) flags


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """The CPU has bf16 arithmetic units, so bf16 autocast can pay. oneDNN also "supports" bf16 on AVX-512
    CPUs without them by converting in software, several times slower than fp32: not worth timing. Where
    /proc/cpuinfo is not there (macOS, Windows), oneDNN's own answer."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags = {word for line in cpuinfo.splitlines() if line.lower().startswith(("flags", "features"))
             for word in line.split(":", 1)[1].split()}
    if flags:
        return bool(flags & NATIVE_BF16_FLAGS)
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def candidate_settings(cfg: Config, device: torch.device) -> tuple[list[Setting], str]:
    """The settings to choose from, and the rule when there is only one."""
    t = cfg.train
    if t.precision != "auto":
        return [Setting(t.precision, t.channels_last)], "explicit"
    if device.type == "cuda":  # today's rule on GPUs: bf16 where the GPU has it
        bf16 = torch.cuda.is_bf16_supported()
        return [Setting("bf16" if bf16 else "fp32", t.channels_last)], "device rule"
    if device.type != "cpu":
        return [Setting("fp32", t.channels_last)], "device rule"
    precisions = ["fp32", "bf16"] if cpu_has_bf16() else ["fp32"]
    return [Setting(p, cl) for p in precisions for cl in (False, True)], "measured"


def machine_key(cfg: Config, device: torch.device, view_size: int, batch_size: int) -> str:
    """What makes a step time this machine's: the cache key of one measurement."""
    from crlf.runtime import hardware_description

    m = cfg.model
    return "|".join(str(x) for x in (
        hardware_description(device), f"cores={os.cpu_count()}", f"torch={torch.__version__}",
        f"python={platform.python_version()}", f"method={cfg.method.name}", f"arch={m.arch}", f"stem={m.stem}",
        f"proj={m.proj_hidden_dim}x{m.proj_out_dim}", f"crops={cfg.augment.crops}", f"image={cfg.data.image_size}",
        f"view={view_size}", f"batch={batch_size}"))


def _read_cache(path: Path) -> dict[str, dict[str, float]]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        warnings.warn(f"ignoring the precision-probe cache '{path}': it is corrupt ({exc}); measuring again.",
                      stacklevel=2)
        return {}
    if not (isinstance(data, dict) and data.get("format") == CACHE_FORMAT and data.get("version") == CACHE_VERSION
            and isinstance(data.get("entries"), dict)):
        warnings.warn(f"ignoring the precision-probe cache '{path}': it is not a CRLF probe cache of version "
                      f"{CACHE_VERSION}; measuring again.", stacklevel=2)
        return {}
    return {k: v for k, v in data["entries"].items()
            if isinstance(v, dict) and all(isinstance(t, (int, float)) for t in v.values())}


def _write_cache(path: Path, entries: dict[str, dict[str, float]]) -> None:
    try:
        atomic_write_text(path, json.dumps({"format": CACHE_FORMAT, "version": CACHE_VERSION, "entries": entries},
                                           indent=1))
    except OSError as exc:  # a read-only cache folder costs a re-measurement next time, nothing else
        warnings.warn(f"could not write the precision-probe cache '{path}': {exc}", stacklevel=2)


def measure_step_times(cfg: Config, device: torch.device, settings: list[Setting], view_sizes: list[int],
                       batch_size: int, num_images: int) -> Timings:
    """Median seconds per real training step (views built from random images, forward, backward, optimiser)
    of each setting at each view size. Runs on fresh copies of the modules, under a forked RNG: the run's
    own weights and random streams are untouched."""
    from crlf.data.augment import build_augment, view_specs
    from crlf.methods.base import StepClock
    from crlf.training.step import build_training_modules, train_step

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    timings: Timings = {s.name: {} for s in settings}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        size = cfg.data.image_size
        images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=gen).to(device)
        augment = build_augment(cfg.augment, size)
        modules = {}
        for s in settings:
            run_cfg = replace(cfg, train=replace(cfg.train, precision=s.precision, channels_last=s.channels_last))
            modules[s] = build_training_modules(run_cfg, device, num_images)
        clock = StepClock(0.0, 1)
        start = time.perf_counter()
        for k, view_size in enumerate(view_sizes):
            specs = view_specs(cfg.augment, size, view_size)
            samples: dict[Setting, list[float]] = {s: [] for s in settings}
            for r in range(WARMUP_ROUNDS + MAX_TIMED_ROUNDS):
                spent_share = (time.perf_counter() - start) / PROBE_SECONDS * len(view_sizes) / (k + 1)
                if r >= WARMUP_ROUNDS + MIN_TIMED_ROUNDS and spent_share > 1:
                    break  # this size has had its share of the probe's time
                for s in settings:
                    method, optimizer = modules[s]
                    sync()
                    t0 = time.perf_counter()
                    views = augment(images, gen, specs)
                    train_step(method, optimizer, views, clock, torch.bfloat16 if s.precision == "bf16" else None)
                    sync()
                    if r >= WARMUP_ROUNDS:
                        samples[s].append(time.perf_counter() - t0)
            for s in settings:
                timings[s.name][view_size] = statistics.median(samples[s])
    return timings


def resolve_precision(cfg: Config, device: torch.device, view_sizes: list[int], *, need_timings: bool,
                      batch_size: int, num_images: int, log: Callable[[str], None] = print,
                      measure: Callable[..., Timings] | None = None, planned_steps: int | None = None
                      ) -> ProbeResult | None:
    """The setting the run trains with. ``None``: nothing to decide or time (explicit precision, no budget),
    the config's own values apply. ``need_timings``: the budget planner needs seconds per step at every
    size in ``view_sizes``. ``planned_steps``: the run's steps, when known (by epochs): a run too short for
    timing to pay (:data:`MAX_PROBE_SHARE`) keeps fp32 untimed. ``measure`` is injectable for tests."""
    settings, rule = candidate_settings(cfg, device)
    if len(settings) == 1 and not need_timings:
        return None if rule == "explicit" else ProbeResult(settings[0], rule, {})
    keys = {v: machine_key(cfg, device, v, batch_size) for v in view_sizes}

    def cached_timings() -> Timings | None:
        entries = _read_cache(cache_file())
        if not all(all(s.name in entries.get(keys[v], {}) for s in settings) for v in view_sizes):
            return None
        return {s.name: {v: float(entries[keys[v]][s.name]) for v in view_sizes} for s in settings}

    def store(timings: Timings) -> Timings:
        path = cache_file()
        entries = _read_cache(path)
        for v in view_sizes:
            entries[keys[v]] = {**entries.get(keys[v], {}), **{s.name: timings[s.name][v] for s in settings}}
        _write_cache(path, entries)
        return timings

    # With several processes rank 0 reads and writes the cache and its numbers decide; the steps are timed
    # on every rank together, because a method's step gathers across ranks.
    timings = distributed.decided_on_main(cached_timings)
    cached = timings is not None
    probe_steps = len(settings) * len(view_sizes) * (WARMUP_ROUNDS + MIN_TIMED_ROUNDS)  # the fewest it takes
    if not cached and not need_timings and planned_steps is not None and probe_steps > MAX_PROBE_SHARE * planned_steps:
        kept = Setting("fp32", cfg.train.channels_last)
        if log:
            log(f"precision auto: {kept.name}, not timed: timing {len(settings)} settings takes at least "
                f"{probe_steps} steps, more than {MAX_PROBE_SHARE:.0%} of this run's {planned_steps}")
        return ProbeResult(kept, "not timed: a short run", {})
    t0 = time.perf_counter()
    if not cached:
        if log and len(settings) > 1:
            log(f"precision auto: timing {len(settings)} settings at {', '.join(f'{v} px' for v in view_sizes)} "
                f"(a few seconds, cached for this machine)")
        local = (measure or measure_step_times)(cfg, device, settings, view_sizes, batch_size, num_images)
        timings, probe_s = distributed.decided_on_main(lambda: (store(local), time.perf_counter() - t0))
    else:
        probe_s = 0.0
    # The fastest over the whole run's mix is the fastest at its most used size; the sum is a fair proxy.
    best = min(settings, key=lambda s: sum(timings[s.name].values()))
    result = ProbeResult(best, ("cached" if cached else "measured") if len(settings) > 1 else rule, timings, probe_s)
    if log and len(settings) > 1:
        log(result.describe())
    return result


def resolve_run_precision(cfg: Config, device: torch.device, state: Progress, num_images: int, view_sizes: list[int],
                          progress: bool) -> tuple[Config, ProbeResult | None]:
    """The config the run trains with (``auto`` resolved to a measured precision and layout), and the probe's
    result. A resumed run (``state``) keeps its recorded choice. With a budget the probe also times the steps
    at every size in ``view_sizes``, for the planner."""
    need_timings = bool(cfg.train.budget_minutes) and state.budget_plan is None
    if state.precision is not None and not need_timings:  # resumed: the choice made when the run started
        rec = state.precision
        probe = ProbeResult(Setting(rec["precision"], rec["channels_last"]), rec["rule"], {}, 0.0)
    else:
        log = tqdm.write if progress else None
        batch = cfg.train.batch_size // distributed.world_size()  # each process times its own share
        planned_steps = cfg.train.epochs * (num_images // cfg.train.batch_size)  # by epochs; a budget plans later
        probe = resolve_precision(cfg, device, view_sizes, need_timings=need_timings, batch_size=batch,
                                  num_images=num_images, log=log, planned_steps=planned_steps)  # rank 0's answer
    if probe is None:
        return cfg, None
    return adopt_precision(cfg, state, probe)


def adopt_precision(cfg: Config, state: Progress, probe: ProbeResult) -> tuple[Config, ProbeResult]:
    """The config that trains with ``probe``'s setting; a new run's ``state`` records the choice."""
    if state.precision is None:
        state.precision = probe.record()
    s = probe.setting
    train = replace(cfg.train, precision=s.precision, channels_last=s.channels_last)
    return replace(cfg, train=train), probe


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast for ``bf16``, and for ``auto`` on a CUDA GPU that has it; fp32 (None) otherwise. A run
    resolves ``auto`` on a CPU by measuring first (:func:`resolve_run_precision`); what is left here is the
    unmeasured rule, for the benchmarks that call it directly."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None
