"""The method registry: the one place that lists the pretraining methods (solo-learn's METHODS dict).

    import methods
    for method in methods.METHODS.values():                  # msn, clar, byola, in table order
        cfg = method.resolve(method.configs["demo"], ["train.epochs=1"])   # a complete config
        encoder = method.build_encoder(cfg)                   # models.build_encoder on that config
    method = methods.get("byola")                             # by name (the checkpoint's "kind")
    method.DEFAULTS, method.build, method.train_step           # what its script declares

Each entry is a `Method`: its name (also the checkpoint "kind"), a display title, its script, its configs and the
recipes the package's drivers run. The code of a method lives in its script `pretrain_<name>.py` (DEFAULTS,
validate, build, train_step; the script is importable, its CLI sits under `if __name__ == "__main__"`); the
registry imports it only when a field of it is asked for, so reading the registry costs nothing.

Who reads it: demo.py (the `demo` and `small` recipes), bench.py (`configs`, `bench_overrides`, `gpu_target`,
the scripts' optional `bench_views`), hear_check.py (`hear_runs`), results/make_tables.py (`studies`,
`reference_tables`), linear_eval.py (`random:CONFIG` resolves a config file through its method) and
tests/test_config_deltas.py (every config file is a delta; no driver names a method). export.py needs nothing
from it: a checkpoint carries its complete config. portable.py and hear_ssl.py must not import it: they stand alone and
dispatch on the encoder architecture stored in the file. Adding a method: its script, one entry below,
its configs, its test (docs/adding_a_method.md).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType


@dataclass(frozen=True)
class Recipe:
    """One run of a driver: `label` names its row (a results-CSV model name, a run folder), `config` is the YAML
    file, `overrides` the `key=value` items added on the command line."""

    label: str
    config: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class HearRun:
    """One short training run of hear_check.py, exported and validated: `max_steps` None = hear_check's --steps;
    `large` runs are skipped with --no-large (checkpoints of a gigabyte and more)."""

    label: str
    config: str
    overrides: tuple[str, ...] = ()
    max_steps: int | None = None
    large: bool = False


@dataclass(frozen=True)
class Study:
    """A results table of one of the method's own studies, a CSV in results/make_tables.py's --studies folder.

    kind "grid"   accuracy by (`row_key`, `column_key`) values, rows `rows` and columns `columns` (numbers,
                  matched as floats) shown even before anything is measured, headed `row_label`, `column_labels`
         "table"  the CSV as it is (`header` when it is empty or absent)
         "pairs"  the accuracy matrix over (aug1, aug2) as a heatmap, with its mean and std
    `reference`: the reference.csv table whose published numbers are quoted under it (never as measurements).
    """

    title: str
    csv: str
    kind: str
    row_key: str = ""
    column_key: str = ""
    rows: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    row_label: str = ""
    column_labels: tuple[str, ...] = ()
    header: tuple[str, ...] = ()
    reference: str = ""


@dataclass(frozen=True)
class Method:
    """One registry entry.

    name             the checkpoint's "kind" and the script's suffix: pretrain_<name>.py
    title            how tables and benchmarks print it ("BYOL-A")
    configs          {"full": the paper's config, "demo": make demo's, "small": the small-compute track's, ...}
    demo, small      the recipes `demo.py` and `demo.py --track small` train, in order (one row each)
    bench_overrides  overrides that switch off work outside the training step (bench.py times the step)
    hear_runs        the runs hear_check.py validates (one encoder architecture each)
    gpu_target       the throughput target `bench.py gpu` prints for its full config (printed, never asserted)
    reference_tables the reference.csv tables of published accuracies the results tables show for it
    studies          its own studies' tables (results/make_tables.py)
    """

    name: str
    title: str
    configs: dict[str, str]
    demo: tuple[Recipe, ...]
    small: tuple[Recipe, ...]
    bench_overrides: tuple[str, ...] = ()
    hear_runs: tuple[HearRun, ...] = field(default_factory=tuple)
    gpu_target: str = ""
    reference_tables: tuple[str, ...] = ()
    studies: tuple[Study, ...] = ()

    @property
    def script(self) -> str:
        return f"pretrain_{self.name}.py"

    @property
    def module(self) -> ModuleType:
        """The method's code: DEFAULTS, validate, build, train_step (imported on first use)."""
        return importlib.import_module(f"pretrain_{self.name}")

    @property
    def DEFAULTS(self) -> dict:  # noqa: N802 - the method file's name for it
        return self.module.DEFAULTS

    @property
    def build(self):
        return self.module.build

    @property
    def train_step(self):
        return self.module.train_step

    def defaults(self) -> dict:
        """The complete default config: trainer.COMMON merged with the method's DEFAULTS."""
        import config as config_lib
        import trainer
        return config_lib.merge(trainer.COMMON, self.DEFAULTS)

    def resolve(self, path: str, overrides: list[str] | tuple[str, ...] = ()) -> dict:
        """The complete config of `path` (a delta on defaults()) with `overrides`, checked by the method."""
        import trainer
        return trainer.resolve_config(path, list(overrides), self.DEFAULTS, getattr(self.module, "validate", None))

    def build_encoder(self, cfg: dict):
        """The encoder of a complete config (models.build_encoder; its `input_kind` is "logmel" or "wave")."""
        import models
        return models.build_encoder(cfg)


METHODS: dict[str, Method] = {m.name: m for m in [
    Method(
        name="msn", title="MSN",
        configs={"full": "config/msn.yaml", "demo": "config/demo_msn.yaml", "small": "config/small_msn.yaml",
                 "audio_vit": "config/msn_audio_vit.yaml"},
        demo=(Recipe("demo_msn", "config/demo_msn.yaml", ("train.epochs=300", "train.monitor.every=30")),),
        small=(Recipe("small_msn", "config/small_msn.yaml"),),
        bench_overrides=("model.pretrained=null",), gpu_target="ViT-B/32 >= 3000 clips/s on one H200 (issue 6)",
        hear_runs=(HearRun("msn_audio_vit", "config/demo_msn.yaml"),
                   HearRun("msn_vit_b32", "config/msn.yaml", ("optim.batch_size=2", "data.num_workers=0"),
                           max_steps=1, large=True)),
    ),
    Method(
        name="clar", title="CLAR",
        configs={"full": "config/clar.yaml", "demo": "config/demo_clar.yaml", "small": "config/small_clar.yaml",
                 "full_1d": "config/clar_1d.yaml"},
        demo=(Recipe("demo_clar", "config/demo_clar.yaml", ("train.epochs=30", "train.monitor.every=3")),),
        small=(Recipe("small_clar", "config/small_clar.yaml"),  # mode=selfsupervised: no labels
               Recipe("small_clar-clarmode", "config/small_clar.yaml", ("mode=clar",))),
        bench_overrides=("train.final_probe=false", "train.eval_every=100000"),
        gpu_target="2-D ResNet18 1 s >= 5000 clips/s on one H200 (issue 6)",
        hear_runs=(HearRun("clar_2d", "config/demo_clar.yaml", ("encoder=2d", "train.final_probe=false")),
                   HearRun("clar_1d", "config/demo_clar.yaml", ("encoder=1d", "train.final_probe=false"))),
        reference_tables=("clar",),
        studies=(  # clar_studies.py writes the CSVs
            Study("CLAR: label fraction x training mode", "clar_labels.csv", "grid", row_key="mode",
                  column_key="label_fraction", rows=("supervised", "self-supervised", "clar"),
                  columns=("1", "0.2", "0.1", "0.01"), row_label="Mode",
                  column_labels=("100 %", "20 %", "10 %", "1 %"), reference="clar_labels"),
            Study("CLAR: 1D (waveform) vs 2D (spectrogram) encoders", "clar_representation.csv", "table",
                  header=("Encoder", "Mode", "Accuracy")),
            Study("CLAR: augmentation pairs", "clar_augpairs.csv", "pairs", reference="clar_augpairs"),
        ),
    ),
    Method(
        name="byola", title="BYOL-A",
        configs={"full": "config/byola.yaml", "demo": "config/demo_byola.yaml", "small": "config/small_byola.yaml"},
        demo=(Recipe("demo_byola", "config/demo_byola.yaml", ("train.epochs=60", "train.monitor.every=6")),),
        small=(Recipe("small_byola", "config/small_byola.yaml"),),
        hear_runs=(HearRun("byola", "config/demo_byola.yaml"),),
    ),
    Method(  # M2D (Niizumi et al., TASLP 2024; nttcslab/m2d); docs/methods.md, "M2D"
        name="m2d", title="M2D",
        configs={"full": "config/m2d.yaml", "demo": "config/demo_m2d.yaml", "small": "config/small_m2d.yaml"},
        demo=(Recipe("demo_m2d", "config/demo_m2d.yaml", ("train.monitor.every=60",)),),
        small=(Recipe("small_m2d", "config/small_m2d.yaml"),),
        hear_runs=(HearRun("m2d", "config/demo_m2d.yaml"),),
    ),
]}


def get(name: str) -> Method:
    """The entry of method `name` (a checkpoint's kind); a clear error naming the known ones otherwise."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; the registry (methods.py) has {sorted(METHODS)}")
    return METHODS[name]


def for_config(path: str) -> Method:
    """The method whose `configs` include the file `path` (a KeyError naming the file otherwise)."""
    from pathlib import Path
    stem = Path(path).stem
    for method in METHODS.values():
        if any(Path(c).stem == stem for c in method.configs.values()):
            return method
    raise KeyError(f"{path}: no method of the registry (methods.py) owns this config; add it to its `configs`")
