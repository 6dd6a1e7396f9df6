"""Typed, frozen training configuration built from a run's resolved params.

Every check runs before any data is loaded or model built, so a bad value fails in a second with a
message naming the ``params.yaml`` key and its valid range.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from smoothnet.privacy.per_sample_method import PerSampleMethod

ACCOUNTANTS = ("rdp", "prv")
OPTIMIZERS = ("sgd",)
LR_SCHEDULES = (
    "step",
    "constant",
    "cosine_epoch",
    "cosine_opacus",
    "cosine_step",
)  # smoothnet.training.schedules


class ConfigError(ValueError):
    """A training parameter is missing or out of range; the message names the params key."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Privacy claim: (target_epsilon, delta)-DP for the training set under the
    chosen accountant, with Poisson sampling at q = 1/len(loader) (Opacus' convention).

    Fields mirror the keys of ``train`` / ``runs.<run_id>`` in params.yaml; the defaults are params.yaml's
    ``train`` values (tests/test_params.py checks they agree), except the code-only ``allow_non_poisson``
    and ``channels_last``, which no run sets.
    """

    run_id: str
    dataset: str
    model: str
    model_options: dict[str, Any] = field(default_factory=dict)
    study: str = "main"
    private: bool = True
    target_epsilon: float | None = 7.0
    noise_multiplier: float | None = None
    delta: float = 1e-5
    accountant: str = "rdp"
    poisson_sampling: bool = True
    allow_non_poisson: bool = False
    max_grad_norm: float = 1.0
    epochs: int = 180
    logical_batch_size: int = 256
    physical_batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 2e-4
    lr_schedule: str = "step"
    lr_step_size: int = 5
    lr_gamma: float = 0.9
    lr_warmup_epochs: int = 0  # linear warm-up over the first epochs (per step for per-step schedules)
    # auto, or a per-sample method's string form (smoothnet.privacy.per_sample_method), e.g. the
    # ``privacy.grad_sample_mode`` a record names, to re-run it with that method and no timing
    grad_sample_mode: str = "auto"
    # with grad_sample_mode auto: time each candidate method for a few steps at the start of a private run
    # and use the fastest (smoothnet.privacy.method_select.autotune); false: the measured table
    autotune_method: bool = True
    channels_last: bool | None = None  # None: what the throughput benchmark measured fastest for the model
    # bf16 autocast of forward and loss (GPU speed); clipping, noise and update stay in fp32
    autocast_bf16: bool = False
    augmentation_multiplicity: int = 0  # 0: no augmentation; K >= 1: K random crop+flip views per example
    ema_decay: float | None = None  # exponential moving average of weights, evaluated beside the raw weights
    train_on_validation: bool = False  # train on train+val (the full official training set)
    seed: int = 0
    # DP runs: noise, Poisson masks and augmentation from OS entropy (releasable, not reproducible)
    secure_noise: bool = False
    # DP runs with the package's clipping module: pad every physical batch to physical_batch_size with rows
    # of loss weight 0 (smoothnet.training.fixed_shape), one shape for a compiled or captured step
    fixed_shape_batches: bool = False

    @classmethod
    def from_params(cls, resolved: dict[str, Any]) -> TrainConfig:
        """Build from ``smoothnet.params.resolve_run`` output; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(resolved) - names)
        if unknown:
            close = {key: difflib.get_close_matches(key, sorted(names), n=1) for key in unknown}
            hints = ", ".join(
                f"{key!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for key, c in close.items()
            )
            raise ConfigError(
                f"run {resolved.get('run_id')!r}: unknown training key(s) {hints}; valid keys: {sorted(names)}"
            )
        for required in ("run_id", "dataset", "model"):
            if not resolved.get(required):
                raise ConfigError(f"run {resolved.get('run_id')!r}: missing required key {required!r}")
        values = dict(resolved)
        options = values.get("model_options")
        values["model_options"] = (
            {} if options is None else dict(options) if isinstance(options, dict) else options
        )
        config = cls(**values)
        config.validate()
        return config

    @property
    def uses_opacus_mode(self) -> bool:
        """Whether ``grad_sample_mode`` names one of Opacus' modes (``auto`` may still pick one)."""
        return self.grad_sample_mode != "auto" and PerSampleMethod.parse(self.grad_sample_mode).is_opacus

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid key and its valid range."""
        where = f"run {self.run_id!r}"
        self._check_types(where)
        self._check_model(where)

        def fail(key: str, message: str) -> None:
            raise ConfigError(f"{where}: {key} {message} (got {getattr(self, key)!r})")

        if self.private:
            if self.target_epsilon is None and self.noise_multiplier is None:
                raise ConfigError(f"{where}: set target_epsilon (> 0) or noise_multiplier (> 0) for a DP run")
            if self.target_epsilon is not None and self.noise_multiplier is not None:
                raise ConfigError(
                    f"{where}: set only one of target_epsilon and noise_multiplier "
                    "(the other is derived); use null for the unused one"
                )
            if self.target_epsilon is not None and not (0 < self.target_epsilon < math.inf):
                fail("target_epsilon", "must be a finite number > 0")
            if self.noise_multiplier is not None and not (0 < self.noise_multiplier < math.inf):
                fail(
                    "noise_multiplier",
                    "must be a finite number > 0 for a DP run (0 adds no noise: no privacy)",
                )
            if not (0 < self.delta < 1):
                fail("delta", "must be in (0, 1) and below 1/N (checked once N is known)")
            if self.accountant not in ACCOUNTANTS:
                fail("accountant", f"must be one of {list(ACCOUNTANTS)}")
            if not (self.max_grad_norm > 0):
                fail("max_grad_norm", "must be > 0 (the per-sample clipping norm C)")
            if not self.poisson_sampling and not self.allow_non_poisson:
                raise ConfigError(
                    f"{where}: poisson_sampling is false, but the accountant's guarantee assumes Poisson "
                    "sampling; set allow_non_poisson: true to run anyway (recorded as not covered)"
                )
        if self.grad_sample_mode != "auto":
            try:
                PerSampleMethod.parse(self.grad_sample_mode)
            except ValueError as exc:
                fail("grad_sample_mode", f"must be auto or a per-sample method; {exc}")
        if not isinstance(self.autotune_method, bool):
            fail("autotune_method", "must be true or false")
        if self.epochs < 1:
            fail("epochs", "must be >= 1")
        if self.logical_batch_size < 1:
            fail("logical_batch_size", "must be >= 1")
        if not (1 <= self.physical_batch_size <= self.logical_batch_size):
            fail("physical_batch_size", f"must be in [1, logical_batch_size={self.logical_batch_size}]")
        if self.optimizer not in OPTIMIZERS:
            fail("optimizer", f"must be one of {list(OPTIMIZERS)}")
        if not (self.lr > 0):
            fail("lr", "must be > 0")
        if not (0 <= self.momentum < 1):
            fail("momentum", "must be in [0, 1)")
        if self.weight_decay < 0:
            fail("weight_decay", "must be >= 0")
        if self.lr_schedule not in LR_SCHEDULES:
            fail("lr_schedule", f"must be one of {list(LR_SCHEDULES)}")
        if self.lr_schedule == "step" and (self.lr_step_size < 1 or not (0 < self.lr_gamma <= 1)):
            raise ConfigError(f"{where}: lr_step_size must be >= 1 and lr_gamma in (0, 1]")
        if not (0 <= self.lr_warmup_epochs < self.epochs):
            fail("lr_warmup_epochs", f"must be in [0, epochs={self.epochs}) (0 = no warm-up)")
        if self.channels_last and self.uses_opacus_mode:
            raise ConfigError(
                f"{where}: channels_last with grad_sample_mode {self.grad_sample_mode!r}: Opacus 1.6.0 computes "
                "wrong per-sample gradients for channels-last models (tests/test_dp_step.py); use "
                "grad_sample_mode: fast, or channels_last: false"
            )
        if self.autocast_bf16 and self.uses_opacus_mode:
            raise ConfigError(
                f"{where}: autocast_bf16 with grad_sample_mode {self.grad_sample_mode!r}: only the package's "
                "clipping module is checked under bf16 autocast; use grad_sample_mode: fast (or auto)"
            )
        if self.augmentation_multiplicity < 0:
            fail("augmentation_multiplicity", "must be >= 0 (0 = no augmentation)")
        if (
            self.private
            and self.augmentation_multiplicity > 1
            and self.grad_sample_mode not in ("auto", "fast")
        ):
            raise ConfigError(
                f"{where}: augmentation_multiplicity {self.augmentation_multiplicity} needs each example's K "
                f"view gradients averaged before clipping, which grad_sample_mode {self.grad_sample_mode!r} "
                "cannot do; use grad_sample_mode: fast (or auto)"
            )
        if self.ema_decay is not None and not (0 < self.ema_decay < 1):
            fail("ema_decay", "must be in (0, 1) or null")
        if self.study not in ("main", "ablation", "literature", "improved"):
            fail("study", "must be one of main, ablation, literature, improved")

    def _check_types(self, where: str) -> None:
        """Every field against its declared type (driven by the annotations, so new fields are covered):
        ints are not floats or bools, bools are bools, numbers are finite."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not value_matches(value, hints[f.name]):
                raise ConfigError(
                    f"{where}: {f.name} must be {describe_type(hints[f.name])} "
                    f"(got {value!r}, a {type(value).__name__})"
                )

    def _check_model(self, where: str) -> None:
        """The model exists and its options match its constructor's parameters and their types."""
        from smoothnet.models.registry import model_entry, model_options

        try:
            entry = model_entry(self.model)
        except ValueError as exc:
            raise ConfigError(f"{where}: model: {exc}") from None
        valid = model_options(self.model)
        unknown = sorted(set(self.model_options) - set(valid))
        if unknown:
            raise ConfigError(
                f"{where}: model_options {unknown} not accepted by model {self.model!r}; valid: {valid or 'none'}"
            )
        try:
            hints = typing.get_type_hints(entry.constructor)
        except (NameError, TypeError):  # an annotation that does not resolve: options are not type-checked
            hints = {}
        for name, value in self.model_options.items():
            hint = hints.get(name, inspect.Parameter.empty)
            if hint is not inspect.Parameter.empty and not value_matches(value, hint):
                raise ConfigError(
                    f"{where}: model_options.{name} must be {describe_type(hint)} for model {self.model!r} "
                    f"(got {value!r}, a {type(value).__name__})"
                )

    def check_dataset_size(self, n_train: int) -> None:
        """Checks that need the training-set size: delta < 1/N and a batch no larger than the data."""
        if self.private and not self.delta < 1 / n_train:
            raise ConfigError(
                f"run {self.run_id!r}: delta must be < 1/N = {1 / n_train:.3g} for N = {n_train} training "
                f"examples (got {self.delta}); the usual choice is 1e-5 for CIFAR-10"
            )
        if self.logical_batch_size > n_train:
            raise ConfigError(
                f"run {self.run_id!r}: logical_batch_size {self.logical_batch_size} exceeds the "
                f"{n_train} training examples"
            )

    def to_params(self) -> dict[str, Any]:
        """The resolved params dict this config was built from (for the run record)."""
        return dataclasses.asdict(self)


def value_matches(value: Any, hint: Any) -> bool:
    """Whether a params value has the declared type: ints are not bools or floats (an int is a valid
    float), floats are finite, ``X | None`` accepts null, containers are checked element-wise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None) or hint is None:
        return value is None
    if origin in (Union, types.UnionType):
        return any(value_matches(value, arg) for arg in args)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if origin is dict or hint is dict:
        key, item = args or (Any, Any)
        return isinstance(value, dict) and all(
            value_matches(k, key) and value_matches(v, item) for k, v in value.items()
        )
    if origin in (list, tuple) or hint in (list, tuple):
        item = args[0] if args else Any
        return isinstance(value, list | tuple) and all(value_matches(v, item) for v in value)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # an annotation this checker does not understand is not enforced


def describe_type(hint: Any) -> str:
    """Words for a declared type, for error messages ("an integer or null")."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    words = {
        bool: "true or false",
        int: "an integer",
        float: "a finite number",
        str: "a string",
        type(None): "null",
        dict: "a mapping",
    }
    return words.get(origin or hint, getattr(hint, "__name__", str(hint)))
