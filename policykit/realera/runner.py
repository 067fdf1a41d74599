"""The stage runner: run stages in order, cache each output by content hash,
resume after a crash from the stages already completed.

A stage's cache key is the sha256 of its name, its settings and the keys of
every stage before it, so changing any setting re-runs that stage and every
one after it, and nothing else. Outputs are tensors (saved with safetensors)
plus a small JSON of key numbers; a stage's cache entry is written to a
temporary directory and renamed into place, so a crash mid-write leaves no
entry that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from policykit.hashing import content_id

TENSORS_FILE = "tensors.safetensors"
INFO_FILE = "info.json"


@dataclass
class StageOutput:
    """What a stage produces: named tensors and a few key numbers for the log."""

    tensors: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class TypedOutput:
    """Base of a stage's typed output (a dataclass): tensor fields, dict-of-tensor fields and ``info``.

    The stage returns it, the next stage reads its fields, and the runner caches
    it as a :class:`StageOutput` (a dict field ``delta`` becomes tensors
    ``delta.<key>``; a None field is left out, so optional and dict fields need defaults).
    """

    def to_stage_output(self) -> StageOutput:
        """The output as the runner caches it."""
        from dataclasses import fields

        tensors: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name == "info" or value is None:
                continue
            if isinstance(value, dict):
                tensors.update({f"{f.name}.{k}": v for k, v in value.items()})
            else:
                tensors[f.name] = value
        return StageOutput(tensors, dict(getattr(self, "info", {})))

    @classmethod
    def from_stage_output(cls, output: StageOutput):
        """The typed output back from the runner's cache (or from a stage that just ran)."""
        from dataclasses import fields

        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name == "info":
                values["info"] = dict(output.info)
            elif f.name in output.tensors:
                values[f.name] = output.tensors[f.name]
            elif any(k.startswith(f.name + ".") for k in output.tensors):
                values[f.name] = {k[len(f.name) + 1:]: v for k, v in output.tensors.items() if k.startswith(f.name + ".")}
        return cls(**values)  # a field neither stored nor defaulted is a TypeError: a damaged cache entry


@dataclass(frozen=True)
class StageSpec:
    """One stage: its name, the settings that determine its output, and the function.

    ``fn`` receives the outputs of the stages that ran before it (by name)
    and returns a :class:`StageOutput`.
    """

    name: str
    settings: Mapping[str, Any]
    fn: Callable[[dict[str, StageOutput]], StageOutput]
    #: Data parallel: under several processes every one runs ``fn`` (which shares its work out); a stage
    #: that is not runs on the main process alone and its output is broadcast (policykit.distributed).
    parallel: bool = False


@dataclass(frozen=True)
class StageRecord:
    """How a stage went: its cache key, whether it was reused, its time and numbers."""

    name: str
    key: str
    cached: bool
    seconds: float
    info: dict[str, Any]


def stage_keys(stages: Sequence[StageSpec], seed_key: str = "") -> list[str]:
    """The cache key of every stage, each chained on the ones before it."""
    keys, previous = [], seed_key
    for spec in stages:
        previous = content_id({"stage": spec.name, "settings": spec.settings, "previous": previous})
        keys.append(previous)
    return keys


class StageRunner:
    """Runs stages in order with a content-addressed cache under ``cache_dir``.

    ``inputs_key`` identifies everything outside the stages' settings that
    their outputs depend on (base model hash, toolkit version...): it seeds
    the key chain. ``log`` receives one line per stage.

    Under several processes (:mod:`policykit.distributed`) only the main one
    reads and writes the cache; a stage that is cached or not ``parallel`` is
    run (or read) there and its output broadcast to the others.
    """

    def __init__(self, cache_dir: str | Path | None, inputs_key: str = "",
                 log: Callable[[str], None] = lambda line: None, processes=None):
        from policykit.distributed import current

        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.inputs_key = inputs_key
        self.log = log
        self.processes = processes or current()

    def run(self, stages: Sequence[StageSpec]) -> tuple[dict[str, StageOutput], list[StageRecord]]:
        """Run (or reuse) every stage in order; returns outputs and records."""
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        outputs: dict[str, StageOutput] = {}
        records: list[StageRecord] = []
        procs = self.processes
        for spec, key in zip(stages, stage_keys(stages, self.inputs_key)):
            start = time.perf_counter()
            cached = self._load(spec.name, key) if procs.main else None
            hit = procs.broadcast(cached is not None)
            if procs.distributed and (hit or not spec.parallel):
                # the main process runs (or reads) it; the others receive its output
                output = None
                if procs.main and not hit:
                    with procs.alone():  # the others are waiting below, not running this stage
                        output = self._compute(spec, outputs, key)
                elif procs.main:
                    output = cached
                output = procs.broadcast(output)
            elif not hit:
                output = self._compute(spec, outputs, key)
            else:
                output = cached
            seconds = time.perf_counter() - start
            outputs[spec.name] = output
            record = StageRecord(spec.name, key, hit, seconds, dict(output.info))
            records.append(record)
            # Only scalars go on the log line; lists and dicts (coverage, configs) stay in the records.
            numbers = ", ".join(f"{k}={_short(v)}" for k, v in output.info.items()
                                if isinstance(v, (int, float, str, bool)))
            self.log(f"{spec.name}: {'cached' if record.cached else 'done'} in {seconds:.2f}s"
                     + (f" ({numbers})" if numbers else ""))
        return outputs, records

    def _compute(self, spec: StageSpec, outputs: dict[str, StageOutput], key: str) -> StageOutput:
        output = spec.fn(dict(outputs))
        if not isinstance(output, StageOutput):
            raise TypeError(f"stage {spec.name} returned {type(output).__name__}, not StageOutput")
        if self.processes.main:
            self._save(spec.name, key, output)
        return output

    def _entry(self, name: str, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{name}-{key[:16]}"

    def _load(self, name: str, key: str) -> StageOutput | None:
        entry = self._entry(name, key)
        if entry is None or not (entry / INFO_FILE).is_file():
            return None
        meta = json.loads((entry / INFO_FILE).read_text())
        if meta.get("key") != key:
            return None
        tensors = {}
        if (entry / TENSORS_FILE).is_file():
            from safetensors.torch import load_file

            tensors = load_file(entry / TENSORS_FILE)
        return StageOutput(tensors, meta.get("info", {}))

    def _save(self, name: str, key: str, output: StageOutput) -> None:
        entry = self._entry(name, key)
        if entry is None:
            return
        tmp = entry.with_name(entry.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if output.tensors:
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous().cpu() for k, v in output.tensors.items()}, tmp / TENSORS_FILE)
        # info.json last: its presence is what marks the entry complete.
        (tmp / INFO_FILE).write_text(json.dumps({"key": key, "info": output.info}, indent=2, default=str))
        shutil.rmtree(entry, ignore_errors=True)
        os.rename(tmp, entry)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
