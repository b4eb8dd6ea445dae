"""LibTuner: a ``triton.jit`` kernel whose launch config comes from the tuning DB.

    @libtuner(configs=[triton.Config({"BLOCK": 256}, num_warps=4), ...],
              key=["n_cols"], strategy=["log"])
    @triton.jit
    def kernel(X, Y, n_cols, BLOCK: tl.constexpr): ...

    kernel[grid](x, y, n)

A call computes the bucketed key and looks it up in one dict; on a hit it launches.
Only the first call of a key in a process goes further: to the tuning store, and on a
true miss to the miss policy (``FLAGGEMS_AUTOTUNE``: never | miss | always).
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import math
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import filelock

from tuner import bench, settings
from tuner.fingerprint import current as current_fingerprint
from tuner.kernel_hash import python_fn, config_repr, kernel_hash
from tuner.keys import StrategySpec, resolve_all
from tuner.stats import bump
from tuner.store import Identity, Miss, Record, Timing, canonical_json, default_store

log = logging.getLogger(__name__)

# Every LibTuner, so tests and tools can clear their in-process caches.
_REGISTRY: list["LibTuner"] = []

# ``resolve_hook``: a tool's say on every key a LibTuner resolves (None: the normal path).
# Consulted only on a miss of a tuner's in-memory dict, never on the hot path.
ResolveHook = Callable[["LibTuner", tuple, tuple, dict, Any], "dict | None"]
# (jit fn, grid, args, kwargs, config[, warmup=True: compile what the config launches, run nothing])
Launcher = Callable[..., Any]
_resolve_hook: ResolveHook | None = None
# While True, a key another process is tuning is not waited for: the call runs the
# kernel's default config and leaves the key to that process (``elsewhere_tuned``).
_skip_busy = False
# A miss met while capturing a CUDA graph ran a config it did not keep (see _resolve)
_fell_back_in_capture = False


class NoConfigError(RuntimeError):
    """Every config of a kernel failed to compile or run for a key."""


FINALISTS = 3  # configs re-timed in full after a brief first round (see LibTuner.tune)


def capturing_graph() -> bool:
    """Whether the current CUDA stream is capturing a graph (vLLM captures its decode
    steps). A miss there must not benchmark: a capture allows no synchronization, and a
    failed call would invalidate the whole capture."""
    if settings.get().interpret:
        return False
    import torch

    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _brief(ms: int) -> int:
    """A first-round budget: a fifth of the full one."""
    return max(1, ms // 5)


def _ms(t: Timing) -> float:
    return t.median_ms if t.median_ms is not None else math.inf


def _key_json_value(v: Any) -> Any:
    import torch

    if isinstance(v, torch.dtype):
        return str(v).removeprefix("torch.")
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return str(v)


def _distance(a: list, b: list) -> float:
    """How far two keys are: infinite unless every non-numeric part matches; else the
    sum of log2 ratios of the numeric parts (16 -> 32 is as far as 2048 -> 4096)."""
    if len(a) != len(b):
        return math.inf
    d = 0.0
    for x, y in zip(a, b):
        numeric = isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool)
        if not numeric:
            if x != y:
                return math.inf
            continue
        d += abs(math.log2(max(float(x), 1.0)) - math.log2(max(float(y), 1.0)))
    return d


def nearest(key: list, records: Iterable[Record]) -> Record | None:
    best, best_d = None, math.inf
    for rec in records:
        d = _distance(key, json.loads(rec.identity.key))
        if d < best_d:
            best, best_d = rec, d
    return best


def _sqlite_file(store: Any) -> Path | None:
    """The SQLite file a store (a layered one: its first SQL layer) writes to, if any."""
    from tuner.store.db import sqlite_path
    from tuner.store.sql import SQLStore

    for layer in getattr(store, "layers", [store]):
        if isinstance(layer, SQLStore):
            return sqlite_path(layer.url)
    return None


class LibTuner:
    def __init__(
        self,
        fn: Any,
        configs: Sequence[Any],
        key: Sequence[str],
        strategy: StrategySpec | Sequence[StrategySpec] = None,
        *,
        default: Any = None,
        warmup: int = 25,
        rep: int = 100,
        prune_configs_by: Callable | dict | None = None,
        reset_to_zero: Sequence[str] = (),
        restore_value: Sequence[str] = (),
        name: str | None = None,
        config_launcher: Launcher | None = None,
    ) -> None:
        if not configs:
            raise ValueError("libtuner needs at least one config")
        self.fn = fn
        self.configs = [config_repr(c) for c in configs]
        self.default = config_repr(default) if default is not None else self.configs[0]
        self.arg_names: list[str] = list(fn.arg_names)
        self._position = {n: i for i, n in enumerate(self.arg_names)}
        unknown = [k for k in key if k not in self.arg_names]
        if unknown:
            raise ValueError(f"key names {unknown} are not arguments of {self.arg_names}")
        strategies = resolve_all(strategy, len(key))
        self._key_specs = tuple((self.arg_names.index(k), k, s) for k, s in zip(key, strategies))
        self.key_names = list(key)
        self._last_key_pos = max(i for i, _, _ in self._key_specs)
        self.warmup, self.rep = warmup, rep
        if isinstance(prune_configs_by, dict):
            prune_configs_by = prune_configs_by.get("early_config_prune")
        self.prune = prune_configs_by
        self.reset_to_zero, self.restore_value = list(reset_to_zero), list(restore_value)
        self.config_launcher = config_launcher
        self._launcher: Any = None  # tuner.launch's, bound on the first launch (it reads the device)
        pyfn = python_fn(fn)
        self.name = name or f"{pyfn.__module__}.{pyfn.__qualname__}"
        self._hash: str | None = None
        self.cache: dict[tuple, dict] = {}
        # What a stored row may name: a row with any other config is not launched.
        self._known_configs = {canonical_json(c) for c in [*self.configs, self.default]}
        self._warned_unknown_config = False
        import torch  # here, not at module level: tunerd and gems-tunedb import tuner without torch

        self._tensor = torch.Tensor
        _REGISTRY.append(self)

    @property
    def kernel_hash(self) -> str:
        if self._hash is None:
            self._hash = kernel_hash(self.fn, self.configs, self.config_launcher, bench.objective())
        return self._hash

    def kernel_hashes(self) -> set[str]:
        """This kernel's version under every tuning objective: the rows current code can
        serve, in some process (``FLAGGEMS_TUNE_HOST``)."""
        return {kernel_hash(self.fn, self.configs, self.config_launcher, o) for o in bench.OBJECTIVES}

    # -- the hot path ------------------------------------------------------------------
    def key_of(self, args: tuple, kwargs: dict) -> tuple:
        if len(args) > self._last_key_pos:  # every key argument positional: the common call
            vals = [s(args[i]) for i, _, s in self._key_specs]
        else:
            n = len(args)
            vals = [s(args[i] if i < n else kwargs[name]) for i, name, s in self._key_specs]
        tensor = self._tensor
        # each tensor argument's dtype; None for one passed as None (absent: a constexpr to
        # Triton), so a dtype's position in the key names the same argument in every call
        vals += [a.dtype if a is not None else None for a in args if a is None or isinstance(a, tensor)]
        if kwargs:  # keyword tensors, in argument order: the same key as passed positionally
            kw = [(self._position[n], v.dtype) for n, v in kwargs.items() if isinstance(v, tensor)]
            if kw:
                vals += [d for _, d in sorted(kw)]
        return tuple(vals)

    def __getitem__(self, grid: Any) -> Callable[..., Any]:
        return functools.partial(self.run, grid=grid)  # a C-level partial: no extra Python frame

    def run(self, *args: Any, grid: Any, **kwargs: Any) -> Any:
        key = self.key_of(args, kwargs)
        cfg = self.cache.get(key)
        if cfg is None:
            cfg = self._resolve(key, args, kwargs, grid)
        if self.config_launcher is not None:
            return self.config_launcher(self.fn, grid, args, kwargs, cfg)
        return (self._launcher or self.kernel_launcher())(grid, args, kwargs, cfg)

    def kept(self, args: tuple, kwargs: dict) -> tuple[Any, dict] | None:
        """After ``run(*args, **kwargs)``: the compiled kernel its launcher kept for that
        call (a ``tuner.launch.Bound``) and the config it ran, or None where nothing was
        kept (the interpreter, a config launcher, fast launch off)."""
        cfg = self.cache.get(self.key_of(args, kwargs))
        if cfg is None or self.config_launcher is not None:
            return None
        kept = self.kernel_launcher().kept(args, kwargs, cfg)
        return None if kept is None else (kept, cfg)

    def kernel_launcher(self) -> Any:
        """The ``tuner.launch.Launcher`` that launches a resolved config:
        ``kernel_launcher()(grid, args, kwargs, config)``."""
        if self._launcher is None:
            from tuner.launch import launcher  # imports torch: not at module level (see __init__)

            self._launcher = launcher(self.fn)
        return self._launcher

    # -- the miss path: once per key per process ----------------------------------------
    def identity(self, key: tuple) -> Identity:
        return Identity(self.name, self.kernel_hash, self.key_json(key), current_fingerprint())

    def _resolve(self, key: tuple, args: tuple, kwargs: dict, grid: Any) -> dict:
        global _fell_back_in_capture
        if _fell_back_in_capture and not capturing_graph():
            # callers filed "nothing kept" for the calls that ran unresolved in the capture;
            # those keys resolve now, one by one: let callers file their launches afresh
            _fell_back_in_capture = False
            _forget_direct()
        hook = _resolve_hook
        if hook is not None:
            cfg = hook(self, key, args, kwargs, grid)
            if cfg is not None:
                self.cache[key] = cfg
                return cfg
        ident = self.identity(key)
        store = default_store()
        policy = settings.get().autotune
        if policy != "always":
            bump("store_reads")
            rec = self._checked(store.lookup(ident))
            if rec is not None:
                bump("hits")
                self.cache[key] = rec.config
                return rec.config
        bump("misses")
        capturing = policy != "never" and capturing_graph()
        if policy == "never" or capturing:
            cfg = self._fallback(ident, store)
            bump("store_writes")
            store.record_miss(Miss(ident, raw_args=self._raw_args(args, kwargs)))
            if capturing:  # not kept: the key's first call outside a capture tunes it
                bump("capture_fallbacks")
                _fell_back_in_capture = True
                return cfg
        else:
            cfg = self._tune_single_flight(ident, key, args, kwargs, grid, store, recheck=policy == "miss")
        self.cache[key] = cfg
        return cfg

    def _raw_args(self, args: tuple, kwargs: dict) -> str:
        n = len(args)
        raw = {name: _key_json_value(args[i] if i < n else kwargs[name]) for i, name, _ in self._key_specs}
        raw["dtypes"] = [_key_json_value(a.dtype) if a is not None else None for a in args if a is None or isinstance(a, self._tensor)]
        raw["dtypes"] += [_key_json_value(kwargs[n].dtype) for n in self.arg_names if isinstance(kwargs.get(n), self._tensor)]
        return canonical_json(raw)

    def key_json(self, key: tuple) -> str:
        """The stored spelling of a bucketed key (what ``Identity.key`` holds)."""
        return canonical_json([_key_json_value(v) for v in key])

    def raw_from_key(self, key: list) -> dict[str, Any] | None:
        """Unbucketed key values (by argument name, plus ``"dtypes"``, as ``Miss.raw_args``
        holds them) that bucket back to the stored ``key``, or None.

        A stored key keeps only bucketed values; a value is usable as a raw one when every
        strategy of its argument maps it to itself (``log``, ``align32`` and ``identity``
        are idempotent on their own outputs). An argument keyed twice (``M`` under
        ``m_class`` and ``log``) takes whichever of its stored values satisfies both.
        """
        n = len(self._key_specs)
        if len(key) < n:
            return None
        by_name: dict[str, list[tuple[int, Any]]] = {}
        for pos, (_, name, strategy) in enumerate(self._key_specs):
            by_name.setdefault(name, []).append((pos, strategy))
        raw: dict[str, Any] = {}
        for name, specs in by_name.items():
            for cand in (key[pos] for pos, _ in specs):
                try:
                    if all(_key_json_value(s(cand)) == key[pos] for pos, s in specs):
                        raw[name] = cand
                        break
                except (TypeError, ValueError):  # a strategy that cannot take this value
                    continue
            else:
                return None
        raw["dtypes"] = list(key[n:])
        return raw

    def serves(self, rec: Record) -> bool:
        """Whether a stored row of this kernel version would be launched (its config is
        one the kernel declares)."""
        return canonical_json(rec.config) in self._known_configs

    def _checked(self, rec: Record | None) -> Record | None:
        """``rec`` if its config is one this kernel declares, else ``None`` (a miss): a row
        written by a buggy client or an old version is never launched."""
        if rec is None or self.serves(rec):
            return rec
        if not self._warned_unknown_config:
            self._warned_unknown_config = True
            log.warning("%s: ignoring stored config %s for key %s: not one of the kernel's configs "
                        "(further such rows of this kernel are ignored silently)", self.name, rec.config, rec.identity.key)
        return None

    def _fallback(self, ident: Identity, store: Any) -> dict:
        """``never``: the nearest tuned key of this kernel version, else the default."""
        bump("fallbacks")
        bump("store_reads")
        found = store.candidates(ident.kernel, ident.kernel_hash, ident.fingerprint)
        rec = nearest(json.loads(ident.key), [r for r in found if self._checked(r) is not None])
        return rec.config if rec is not None else self.default

    def _lock_path(self, ident: Identity, store: Any) -> str:
        """The per-key tuning lock: beside the SQLite DB the store writes to, so every
        process sharing that file shares the lock whatever its cache dir; in the cache
        dir when there is no SQLite file (a PostgreSQL URL or tunerd)."""
        digest = hashlib.sha256(f"{ident.kernel}|{ident.kernel_hash}|{ident.key}|{ident.env_id}".encode()).hexdigest()[:24]
        db_file = _sqlite_file(store)
        path = db_file.with_name(db_file.name + ".locks") if db_file is not None else settings.get().cache_dir / "locks"
        path.mkdir(parents=True, exist_ok=True)
        return str(path / f"{digest}.lock")

    def _tune_single_flight(self, ident, key, args, kwargs, grid, store, *, recheck: bool) -> dict:
        """One process tunes a key; the others wait on its lock, then read its row (or,
        under ``elsewhere_tuned``, run the default config at once)."""
        lock = filelock.FileLock(self._lock_path(ident, store))
        try:
            lock.acquire(timeout=0 if _skip_busy else -1)
        except filelock.Timeout:
            return dict(self.default)
        try:
            if recheck:
                bump("store_reads")
                rec = self._checked(store.lookup(ident))
                if rec is not None:
                    bump("hits")
                    return rec.config
            rec, timings = self.tune(ident, key, args, kwargs, grid)
            bump("store_writes")
            store.save(rec, timings)
            return rec.config
        finally:
            lock.release()

    def candidate_configs(self, args: tuple, kwargs: dict) -> list[dict]:
        if self.prune is None:
            return list(self.configs)
        named = dict(zip(self.arg_names, args)) | kwargs
        kept = list(self.prune(list(self.configs), named))
        return kept or [self.default]

    def warm(self, args: tuple, kwargs: dict, grid: Any, configs: Sequence[dict] | None = None) -> int:
        """Compile ``configs`` (default: the candidates for these arguments) into Triton's
        cache without launching anything; returns how many compiled. Pretuning runs this
        in parallel processes ahead of benchmarking (``tuner.precompile``)."""
        ok = 0
        for cfg in self.candidate_configs(args, kwargs) if configs is None else configs:
            try:
                if self.config_launcher is not None:
                    self.config_launcher(self.fn, grid, args, kwargs, cfg, warmup=True)
                else:
                    self.fn.warmup(*args, grid=grid, **kwargs, **cfg)
                ok += 1
            except Exception as e:  # it fails again, and is timed as failing, when benchmarked
                log.debug("config %s of %s does not compile: %s", cfg, self.name, e)
        return ok

    def budget_ms(self, n: int) -> float:
        """The benchmark time ``tune`` spends on ``n`` candidates (do_bench's warm-up plus
        repetitions): a lone candidate briefly (it has nothing to beat; the brief timing
        gives its record a median and shows it runs), a few in full, or with more than
        ``FINALISTS`` a brief round for all and a full one for the finalists."""
        full = self.warmup + self.rep
        if n == 1:
            return float(_brief(self.warmup) + _brief(self.rep))
        if n <= FINALISTS:
            return float(n * full)
        return float(n * (_brief(self.warmup) + _brief(self.rep)) + FINALISTS * full)

    def tune(self, ident: Identity, key: tuple, args: tuple, kwargs: dict, grid: Any, *, source: str = "online") -> tuple[Record, list[Timing]]:
        """Benchmark every candidate config on these arguments; a failing config is
        timed as infinite. Restores ``restore_value`` arguments afterwards.

        A large space is timed in two rounds: every config briefly (a fifth of the
        warm-up and repetitions), then the ``FINALISTS`` fastest in full, so most of the
        benchmark time goes to the configs that can win. A lone candidate is timed
        briefly only."""
        timer = bench.get_timer()
        named = dict(zip(self.arg_names, args)) | kwargs
        cands = self.candidate_configs(args, kwargs)
        bump("benchmarks_run")
        sets, own = self._argument_sets(args, kwargs)
        with self._restoring(named, own):
            if len(cands) <= FINALISTS:  # one candidate has nothing to beat: a brief timing
                timings = [self._time_one(timer, cfg, key, sets, grid, brief=len(cands) == 1) for cfg in cands]
                full = timings
            else:
                timings = [self._time_one(timer, cfg, key, sets, grid, brief=True) for cfg in cands]
                ranked = sorted(range(len(cands)), key=lambda i: _ms(timings[i]))
                for i in [i for i in ranked[:FINALISTS] if math.isfinite(_ms(timings[i]))]:
                    timings[i] = self._time_one(timer, cands[i], key, sets, grid, count=False)
                full = [timings[i] for i in ranked[:FINALISTS]]
        ok = [t for t in timings if math.isfinite(_ms(t))]
        if not ok:
            errors = "; ".join(f"{t.config}: {t.error}" for t in timings)
            raise NoConfigError(f"{self.name} key {ident.key}: every config failed: {errors}")
        best = min([t for t in full if math.isfinite(_ms(t))] or ok, key=_ms)
        rec = Record(ident, best.config, best.median_ms, best.p20_ms, best.p80_ms, len(timings), source=source)
        return rec, timings

    def time_config(self, config: dict, key: tuple, args: tuple, kwargs: dict, grid: Any) -> Timing:
        """One config timed on these arguments with the benchmark timer (``bench``), as
        ``tune`` times each candidate; a failing config gives a Timing with ``error``."""
        named = dict(zip(self.arg_names, args)) | kwargs
        sets, own = self._argument_sets(args, kwargs)
        with self._restoring(named, own):
            return self._time_one(bench.get_timer(), config, key, sets, grid)

    @contextmanager
    def _restoring(self, named: dict, own: bool) -> Iterator[None]:
        """Where timing launches on the call's own tensors (``own``): afterwards put
        ``restore_value`` arguments back, and any argument whose memory another one shares
        (an output that is an input: written in place, undeclared), and zero
        ``reset_to_zero`` ones, so the call's real launch sees what its caller passed."""
        saved = {n: named[n].clone() for n in self._written(named)} if own else {}
        try:
            yield
        finally:
            for n, t in saved.items():
                named[n].copy_(t)
            for n in self.reset_to_zero if own else ():
                if named.get(n) is not None:
                    named[n].zero_()

    def _written(self, named: dict) -> list[str]:
        """``restore_value``, and the tensor arguments that share a storage with another."""
        by_storage: dict[int, list[str]] = {}
        for n, t in named.items():
            if isinstance(t, self._tensor) and t.numel():
                by_storage.setdefault(t.untyped_storage().data_ptr(), []).append(n)
        shared = [n for names in by_storage.values() if len(names) > 1 for n in names]
        return [n for n in dict.fromkeys([*self.restore_value, *shared]) if named.get(n) is not None]

    def _argument_sets(self, args: tuple, kwargs: dict) -> tuple[list[tuple[tuple, dict, list]], bool]:
        """(args, kwargs, tensors to zero before each launch) per set of arguments that
        timing rotates through, and whether the call's own tensors are among them.

        Timing launches each config many times: an in-place kernel (``out`` is an input,
        an accumulating scatter) would apply its update every time. So it launches on
        copies of the arguments (``bench.rotations``' copies; under the interpreter, one),
        never on the call's own; only a working set too large to copy (``ROTATE_BYTES``)
        is timed on the call's own tensors, which ``restore_value`` / ``reset_to_zero``
        then put back (see _restoring)."""
        interpret = settings.get().interpret
        sets = bench.rotations(args, kwargs, "cpu", max_copies=1) if interpret else bench.rotations(args, kwargs)
        own = len(sets) == 1
        if not own:
            sets = sets[1:]
        out = []
        for a, kw in sets:
            named = dict(zip(self.arg_names, a)) | kw
            out.append((a, kw, [named[n] for n in self.reset_to_zero if named.get(n) is not None]))
        return out, own

    def _time_one(self, timer, cfg, key, sets, grid, *, brief: bool = False, count: bool = True) -> Timing:
        turn = itertools.cycle(sets)

        def launch() -> None:
            args, kwargs, zero = next(turn)
            for t in zero:
                t.zero_()
            if self.config_launcher is not None:
                self.config_launcher(self.fn, grid, args, kwargs, cfg)
            else:
                self.fn[grid](*args, **kwargs, **cfg)

        if count:
            bump("configs_timed")
        warmup, rep = (_brief(self.warmup), _brief(self.rep)) if brief else (self.warmup, self.rep)
        try:
            med, p20, p80 = timer(bench.BenchRequest(launch, self.name, cfg, key, warmup, rep))
        except Exception as e:  # a config that cannot compile or launch never wins
            log.debug("config %s of %s failed: %s", cfg, self.name, e)
            return Timing(cfg, None, error=f"{type(e).__name__}: {e}"[:2000])
        return Timing(cfg, med, p20, p80)


def libtuner(
    configs: Sequence[Any],
    key: Sequence[str],
    strategy: StrategySpec | Sequence[StrategySpec] = None,
    *,
    default: Any = None,
    warmup: int = 25,
    rep: int = 100,
    prune_configs_by: Callable | dict | None = None,
    reset_to_zero: Sequence[str] = (),
    restore_value: Sequence[str] = (),
    name: str | None = None,
    config_launcher: Launcher | None = None,
) -> Callable[[Any], LibTuner]:
    """Decorate a ``triton.jit`` function so its config comes from the tuning DB.

    ``config_launcher(fn, grid, args, kwargs, config, warmup=False)``, when given, launches a
    resolved config in place of ``fn[grid](*args, **kwargs, **config)``, at run time and when
    timing: for a config that needs more than the one kernel (split-K's partial sums and
    their reduction) or another kernel (a TMA variant), so its benchmark is the whole of
    what a call costs. With ``warmup=True`` it compiles what the config would launch
    (``LibTuner.warm``). Its source and the kernels it launches are part of the kernel hash."""

    def wrap(fn: Any) -> LibTuner:
        return LibTuner(
            fn, configs, key, strategy, default=default, warmup=warmup, rep=rep,
            prune_configs_by=prune_configs_by, reset_to_zero=reset_to_zero,
            restore_value=restore_value, name=name, config_launcher=config_launcher,
        )

    return wrap


@contextmanager
def elsewhere_tuned() -> Iterator[None]:
    """In this block a key whose tuning lock another process holds is not waited for:
    the call runs the kernel's default config (remembered for the rest of the process's
    run) and the lock holder stores the key. For pretune workers sharing one DB across
    GPUs: a device does not idle while another tunes a key both reached. (The compile
    pool compiles each job's first tuned kernel's default ahead; any other default
    compiles when first run.)"""
    global _skip_busy
    old, _skip_busy = _skip_busy, True
    try:
        yield
    finally:
        _skip_busy = old


def resolved_configs() -> dict[tuple[str, tuple], dict]:
    """Every (kernel name, key) -> config resolved in this process so far (for tools)."""
    return {(t.name, key): cfg for t in _REGISTRY for key, cfg in t.cache.items()}


def clear_caches() -> None:
    """Forget every key resolved in this process (the next call asks the store again)."""
    for t in _REGISTRY:
        t.cache.clear()
    _forget_direct()


def _forget_direct() -> None:
    if "tuner.launch" in sys.modules:  # callers' direct launches hold resolved configs
        sys.modules["tuner.launch"].forget_direct()


@contextmanager
def resolve_hook(hook: ResolveHook) -> Iterator[None]:
    """Ask ``hook(tuner, key, args, kwargs, grid)`` first whenever a LibTuner resolves a
    key in this block: a config it returns is used (and memoized), ``None`` falls through
    to the store and the miss policy. In-process caches are cleared on entry and exit,
    so every key of the block is resolved through the hook once. ``gems-tunedb verify``
    uses this to time a stored winner on the arguments of a real call."""
    global _resolve_hook
    old, _resolve_hook = _resolve_hook, hook
    clear_caches()
    try:
        yield
    finally:
        _resolve_hook = old
        clear_caches()
