"""The training loop: DP-SGD (or the same loop without privacy) with per-epoch evaluation,
checkpoints, DVCLive metrics and a complete run record.

Reads top to bottom: build everything (:func:`prepare_run`), resume if a checkpoint exists, train epoch
by epoch, then write the record. Deterministic on CPU for a given seed.
"""

from __future__ import annotations

import copy
import ctypes
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from opacus.validators import ModuleValidator
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from smoothnet.models import build_model, count_parameters
from smoothnet.privacy.accounting import noise_for_target, opacus_sample_rate
from smoothnet.privacy.dp_statistics import StatisticsRelease, find_standardize, fit_statistics
from smoothnet.privacy.method_select import MethodChoice
from smoothnet.records import (
    DatasetSection,
    ModelSection,
    PerformanceSection,
    PrivacySection,
    ResultsSection,
    RunRecord,
    TrainingSection,
    write_record,
)
from smoothnet.training.batches import augmentation_views, normalize
from smoothnet.training.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointUnreadable,
    RunState,
    checkpoint_state,
    config_fingerprint,
    load_checkpoint,
    remove_orphaned_temporaries,
    restore,
    save_checkpoint,
    set_aside_checkpoint,
    stale_reason,
)
from smoothnet.training.config import ConfigError, TrainConfig
from smoothnet.training.distributed import DistributedContext, init_distributed, rank_device, sampling_seed
from smoothnet.training.dp import PerSampleMethod, RandomStreams, make_private, random_streams
from smoothnet.training.environment import device_name, git_state, library_versions
from smoothnet.training.progress import batch_progress, format_duration
from smoothnet.training.runlock import hold_run_lock
from smoothnet.training.schedules import Schedule
from smoothnet.training.setups import NonPrivateTraining, PrivateTraining


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TimeLimitReached(RuntimeError):
    """The run stopped at an epoch boundary because its time limit would be passed; its checkpoint holds
    everything to resume (the same command continues it to the same record)."""

    def __init__(self, run_id: str, epoch: int, epochs: int, checkpoint: Path) -> None:
        super().__init__(
            f"run {run_id!r}: stopped at the time limit after epoch {epoch} of {epochs}; the checkpoint "
            f"{checkpoint} is kept: run the same command to resume"
        )
        self.epoch, self.epochs, self.checkpoint = epoch, epochs, checkpoint


@dataclass
class RunPaths:
    """Where a run reads and writes."""

    data_dir: Path  # prepared dataset (data/prepared/<dataset>)
    run_dir: Path  # runs/<run_id>: record.json + dvclive/ (git-tracked)
    checkpoint_dir: Path  # checkpoints/<run_id> (a DVC output)
    repo_root: Path = Path(".")

    @property
    def record_path(self) -> Path:
        return self.run_dir / "record.json"


@dataclass
class EvalSet:
    """A split held on the device, as model inputs (normalised images or precomputed features)."""

    inputs: Tensor
    labels: Tensor
    normalised: bool  # True when inputs are already model-ready (features)


def train(config: TrainConfig, paths: RunPaths, **options: Any) -> dict[str, Any]:
    """Train one run end to end and return its record (also written to ``paths.record_path``).

    Holds the run's lock (:mod:`smoothnet.training.runlock`) throughout: a second trainer of the same run
    stops at once naming the first. Before any data is loaded, the run and checkpoint folders must be
    writable, and temporary files a killed writer left in them are removed. Options: see :func:`_train`.
    """
    context = DistributedContext.from_env()
    if not context.is_main:  # rank 0 holds the lock for all ranks
        return _train(config, paths, **options)
    with hold_run_lock(paths.checkpoint_dir, config.run_id):
        for folder in (paths.checkpoint_dir, paths.run_dir):
            _check_writable(folder, config.run_id)
            remove_orphaned_temporaries(folder)
        return _train(config, paths, **options)


def _check_writable(folder: Path, run_id: str) -> None:
    """Fail before training, not after the first epoch, when ``folder`` cannot be written."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the folder is created later; nothing is created by this check
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a folder")
        probe = existing / f".write-probe-{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"run {run_id!r}: cannot write to {folder} ({exc.strerror or exc}); fix its permissions or free "
            "space before training"
        ) from exc


def _train(
    config: TrainConfig,
    paths: RunPaths,
    *,
    resolved_params: dict[str, Any] | None = None,
    profile: str = "paper",
    stage: str | None = None,
    device: torch.device | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int], None] | None = None,
    time_limit_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """The body of :func:`train` (called with the run's lock held).

    Args:
        config: the validated run configuration.
        paths: data, run and checkpoint folders.
        resolved_params: the run's params as read from params.yaml (stored verbatim in the record);
            defaults to the config's fields.
        profile: "paper", "improved" or "quick" (labels the record).
        stage: the DVC stage name recorded (default ``train@<run_id>``).
        device: defaults to CUDA when available.
        progress: show progress (a bar per epoch on a terminal, plain lines in a log) and a line per epoch.
        on_epoch_end: called with the completed epoch number after its checkpoint is written.
        time_limit_s: stop with :class:`TimeLimitReached` after the epoch whose checkpoint is the last that
            fits: once the time since the call started, plus the longest epoch of this session, would pass
            the limit. A run option, not a training parameter: no part of the record or fingerprint.
        clock: seconds, for the time limit (tests pass a fake one).
    """
    from smoothnet.data import load_prepared

    called_at = clock()
    context = DistributedContext.from_env()
    device = rank_device(context, device or torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    init_distributed(context, device)
    revision, dirty = git_state(paths.repo_root)  # the code the run starts with
    data = load_prepared(paths.data_dir)
    torch.manual_seed(config.seed)  # model initialisation (identical on every rank)
    from smoothnet.privacy.method_select import load_choice, save_choice

    saved_choice = load_choice(paths.checkpoint_dir, config_fingerprint(config))
    run = prepare_run(config, data, device, context, saved_choice)
    if context.is_main and run.method_choice is not None and run.method_choice.source == "autotune":
        save_choice(paths.checkpoint_dir, run.method_choice, config_fingerprint(config))
    # What remains on the global generator (e.g. dropout); a DP run's sampling, noise and augmentation
    # come from run.streams instead (smoothnet.training.dp.random_streams).
    torch.manual_seed(sampling_seed(config.seed, context))
    state = RunState()
    try:
        checkpoint = load_checkpoint(paths.checkpoint_dir)
    except CheckpointUnreadable as exc:  # truncated, corrupt or unsafe: never executed, kept aside
        _barrier(context)
        if context.is_main:
            aside = set_aside_checkpoint(paths.checkpoint_dir, ".unreadable")
            print(f"[{config.run_id}] {exc}; starting over (file kept as {aside})")
        checkpoint = None
    if checkpoint is not None and checkpoint["config_fingerprint"] != config_fingerprint(config):
        _barrier(context)
        if context.is_main:
            stale = set_aside_checkpoint(paths.checkpoint_dir)
            print(
                f"[{config.run_id}] not resuming the checkpoint: {stale_reason(checkpoint)}; "
                f"starting over (old one kept as {stale})"
            )
        checkpoint = None
    if checkpoint is not None:
        state = restore(checkpoint, config, run, context)
        if progress and context.is_main:
            print(f"[{config.run_id}] resuming after epoch {state.epoch} of {config.epochs}")
    live = _open_live(paths.run_dir, state.history) if context.is_main else None

    session_start, session_first_epoch = time.perf_counter(), state.epoch
    longest_epoch = 0.0
    while state.epoch < config.epochs:
        started, epoch_began = time.perf_counter(), clock()
        if hasattr(run.train_loader.sampler, "set_epoch"):
            run.train_loader.sampler.set_epoch(state.epoch)
        epoch_lr = run.optimizer.param_groups[0]["lr"]
        steps_before = state.steps
        train_loss, train_accuracy, examples = _train_one_epoch(
            config, run, state, device, progress and context.is_main
        )
        state.train_seconds += time.perf_counter() - started
        state.examples_seen += run.training.released_examples(
            state.steps - steps_before, run.n_train, examples, context.world_size
        )
        run.scheduler.after_epoch()
        state.epoch += 1
        metrics = _evaluate_epoch(config, run, state, train_loss, train_accuracy, epoch_lr)
        state.history.append(metrics)
        saved = checkpoint_state(config, run, state, context)
        if context.is_main:
            save_checkpoint(paths.checkpoint_dir, saved)  # first: a full disk must not lose it
            _log_live(live, metrics)
            if progress:
                elapsed = time.perf_counter() - session_start
                per_epoch = elapsed / (state.epoch - session_first_epoch)
                remaining = per_epoch * (config.epochs - state.epoch)
                print(_epoch_line(config, metrics, elapsed, remaining), flush=True)
        _barrier(context)
        if on_epoch_end is not None:
            on_epoch_end(state.epoch)
        longest_epoch = max(longest_epoch, clock() - epoch_began)
        if state.epoch < config.epochs and _out_of_time(
            clock() - called_at, longest_epoch, time_limit_s, context
        ):
            raise TimeLimitReached(
                config.run_id, state.epoch, config.epochs, paths.checkpoint_dir / CHECKPOINT_NAME
            )
    typed = build_record(config, run, state, data, device, paths, resolved_params, profile)
    typed.environment.update(git_revision=revision, git_dirty=dirty)
    typed.stage = stage or typed.stage
    typed.training.world_size = context.world_size
    record = typed.to_dict()
    if context.is_main:
        live.end()
        write_record(paths.record_path, record)
    _barrier(context)
    return record


def _out_of_time(
    elapsed: float, longest_epoch: float, limit: float | None, context: DistributedContext
) -> bool:
    """Whether another epoch would pass the limit; rank 0 decides for all ranks (their clocks differ)."""
    if limit is None:
        return False
    stop = elapsed + longest_epoch > limit
    if context.enabled:
        decision = [stop]
        torch.distributed.broadcast_object_list(decision, src=0)
        stop = decision[0]
    return stop


def _barrier(context: DistributedContext) -> None:
    if context.enabled:
        torch.distributed.barrier()


# ----------------------------------------------------------------------------- setup


@dataclass
class PreparedRun:
    """The model, optimizer and data of one run, ready to train."""

    module: nn.Module  # plain trainable module (model, or its head for fixed-feature models)
    full_model: nn.Module
    ema: AveragedModel | None
    training: PrivateTraining | NonPrivateTraining  # how a step is taken (loader, optimizer, forward)
    scheduler: Schedule
    eval_sets: dict[str, EvalSet]
    mean: Tensor
    std: Tensor
    features_precomputed: bool
    n_train: int
    channels_last: bool = False
    streams: RandomStreams | None = None  # a DP run's private randomness (never recorded)
    method_choice: MethodChoice | None = None  # how the per-sample method was chosen, in the record

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.training.optimizer

    @property
    def train_loader(self) -> DataLoader:
        return self.training.loader


def prepare_run(
    config: TrainConfig,
    data,
    device: torch.device,
    context: DistributedContext | None = None,
    saved_choice: MethodChoice | None = None,
) -> PreparedRun:
    """Build model, data, optimizer, privacy wrapper and scheduler; all checks happen before training.

    ``saved_choice``: the per-sample method autotuned when the run started (kept on resume)."""
    context = context or DistributedContext()
    train_x, train_y = data.split("train")
    if config.train_on_validation:
        val_x, val_y = data.split("val")
        train_x, train_y = torch.cat([train_x, val_x]), torch.cat([train_y, val_y])
    config.check_dataset_size(len(train_y))
    image_size = int(train_x.shape[-1])
    model = build_model(
        config.model, num_classes=data.num_classes, image_size=image_size, **config.model_options
    )
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError(f"run {config.run_id!r}: model {config.model!r} is not DP-compatible: {errors}")
    channels_last = config.channels_last
    if channels_last is None:
        from smoothnet.privacy.method_select import choose_channels_last

        # Only with our clipping module: Opacus' per-sample gradients are wrong for channels-last models.
        uses_opacus_mode = (
            config.private and PerSampleMethod.parse(resolve_method(config, device, image_size)).is_opacus
        )
        channels_last = (
            choose_channels_last(config.model, device.type, image_size, _needs_our_module(config))
            and not uses_opacus_mode
        )
    model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    mean, std = torch.as_tensor(data.mean, device=device), torch.as_tensor(data.std, device=device)

    streams = None
    if config.private:
        streams = random_streams(
            config.seed, config.run_id, secure=config.secure_noise, device=device, rank=context.rank
        )
    frontend = getattr(model, "frozen_frontend", None)
    features_precomputed = frontend is not None
    module = model.head if features_precomputed else model
    if features_precomputed and config.augmentation_multiplicity:
        raise ConfigError(
            f"run {config.run_id!r}: augmentation needs images; model {config.model!r} "
            "trains on fixed features (set augmentation_multiplicity: 0)"
        )
    method_choice = None
    if config.private:
        # Timed before the features exist: the candidates' per-example gradients would otherwise peak on
        # top of them (the ScatterNet features of CIFAR-10 are 3.7 GB). Timing never touches the module.
        example = _features(frontend, train_x[:1], mean, std, device) if features_precomputed else train_x[:1]
        method_choice = choose_method_for_run(
            config,
            device,
            image_size,
            _timing_copy(module),
            tuple(example.shape[1:]),
            channels_last,
            context,
            saved_choice,
        )
        release_free_memory()
    eval_sets: dict[str, EvalSet] = {}
    # Trained-on validation images are no validation set: evaluate on test only (never tune on it).
    for split in ("test",) if config.train_on_validation else ("val", "test"):
        x, y = data.split(split)
        if len(y) == 0:
            continue
        if features_precomputed:
            eval_sets[split] = EvalSet(_features(frontend, x, mean, std, device), y.to(device), True)
        else:
            eval_sets[split] = EvalSet(x.to(device), y.to(device), False)
    if features_precomputed:
        train_dataset = TensorDataset(_features(frontend, train_x, mean, std, device).cpu(), train_y)
        del train_x
        data.release_images()  # only the features are trained and evaluated on from here
        statistics = fit_statistics(
            module,
            train_dataset.tensors[0],
            private=config.private,
            generator=streams.statistics if streams is not None else None,
        )
    else:
        train_dataset = TensorDataset(train_x, train_y)
        statistics = None

    ema = None
    if config.ema_decay is not None:  # copied before Opacus attaches its hooks to the module
        ema = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    if config.private:
        method = method_choice.method
        _check_private_setup(config, method, channels_last, context, len(train_y))
        setup = make_private(
            module,
            optimizer,
            train_dataset,
            method=method,
            logical_batch_size=config.logical_batch_size,
            max_grad_norm=config.max_grad_norm,
            epochs=config.epochs,
            accountant=config.accountant,
            delta=config.delta,
            **_composed_calibration(config, statistics, len(train_y), context),
            poisson_sampling=config.poisson_sampling,
            distributed=context.enabled,
            streams=streams,
        )
        training = PrivateTraining(setup, statistics)
    elif context.enabled:
        sampler = DistributedSampler(train_dataset, shuffle=True, seed=config.seed)
        train_loader = DataLoader(
            train_dataset, batch_size=config.logical_batch_size // context.world_size, sampler=sampler
        )
        training = NonPrivateTraining(DistributedDataParallel(module), module, optimizer, train_loader)
    else:
        train_loader = DataLoader(train_dataset, batch_size=config.logical_batch_size, shuffle=True)
        training = NonPrivateTraining(module, module, optimizer, train_loader)
    return PreparedRun(
        module=module,
        full_model=model,
        ema=ema,
        training=training,
        scheduler=Schedule(config, training.optimizer, steps_per_epoch=len(training.loader)),
        eval_sets=eval_sets,
        mean=mean,
        std=std,
        features_precomputed=features_precomputed,
        n_train=len(train_y),
        channels_last=channels_last,
        streams=streams,
        method_choice=method_choice,
    )


def _composed_calibration(
    config: TrainConfig, statistics: StatisticsRelease | None, n_train: int, context: DistributedContext
) -> dict[str, float | None]:
    """``target_epsilon``/``noise_multiplier`` for make_private: with private feature statistics, DP-SGD's
    sigma is calibrated so that statistics + DP-SGD together reach the target (one fixed sigma)."""
    if statistics is None or config.target_epsilon is None:
        return {"target_epsilon": config.target_epsilon, "noise_multiplier": config.noise_multiplier}
    if context.enabled:
        raise ConfigError(
            f"run {config.run_id!r}: private feature statistics are not supported under torchrun"
        )
    sigma = noise_for_target(
        config.target_epsilon,
        config.delta,
        opacus_sample_rate(n_train, config.logical_batch_size),
        epochs=config.epochs,
        accountant=config.accountant,
        prior=statistics.history,
    )
    return {"target_epsilon": None, "noise_multiplier": sigma}


def _check_private_setup(
    config: TrainConfig, method: str, channels_last: bool, context: DistributedContext, n_train: int
) -> None:
    """Refuse DP set-ups whose guarantee or correctness the package cannot vouch for, before training."""
    where = f"run {config.run_id!r}"
    opacus_mode = PerSampleMethod.parse(method).is_opacus
    if channels_last and opacus_mode:
        raise ConfigError(
            f"{where}: channels_last with per-sample method {method!r}: Opacus 1.6.0 computes wrong per-sample "
            "gradients for channels-last models; set channels_last: false or grad_sample_mode: fast"
        )
    if config.autocast_bf16 and opacus_mode:
        raise ConfigError(
            f"{where}: autocast_bf16 with per-sample method {method!r}: only the package's clipping module is "
            "checked under bf16 autocast; set grad_sample_mode: fast or autocast_bf16: false"
        )
    if context.enabled and not config.poisson_sampling:
        raise ConfigError(
            f"{where}: non-Poisson sampling under torchrun would give every rank the whole dataset (each "
            "example counted world_size times); use poisson_sampling: true"
        )
    per_rank = config.logical_batch_size / context.world_size
    if context.enabled and per_rank < 32:
        # Opacus' distributed Poisson sampler silently skips a rank's empty batch, which would desynchronise
        # the ranks' steps; at >= 32 expected examples per rank an empty batch has probability < 1e-13.
        raise ConfigError(
            f"{where}: {per_rank:.0f} expected examples per rank per step; use at least 32 per rank "
            f"(logical_batch_size >= {32 * context.world_size}) or fewer processes"
        )


def _needs_our_module(config: TrainConfig) -> bool:
    """Only the package's clipping module clips the mean of an example's K views and is checked under
    bf16 autocast."""
    return config.augmentation_multiplicity > 1 or config.autocast_bf16


def resolve_method(config: TrainConfig, device: torch.device, image_size: int | None = None) -> str:
    """The per-sample gradient method: the configured one, or for ``auto`` the fastest measured one for the
    model, device type and image size (smoothnet.privacy.method_select).

    Returns an Opacus mode (hooks, functorch, ew, ghost) or ``fast:<method>[+<conv>]`` for the package's
    book-keeping plug-in (smoothnet.privacy.fast_clipping).
    """
    from smoothnet.privacy.method_select import choose_method

    mode = config.grad_sample_mode
    if mode == "auto":
        return str(
            PerSampleMethod.from_table(
                choose_method(config.model, device.type, image_size, _needs_our_module(config))
            )
        )
    return str(PerSampleMethod.parse(mode))


def choose_method_for_run(
    config: TrainConfig,
    device: torch.device,
    image_size: int | None,
    module: nn.Module,
    example_shape: tuple[int, ...],
    channels_last: bool,
    context: DistributedContext,
    saved_choice: MethodChoice | None = None,
) -> MethodChoice:
    """The run's per-sample method: with ``grad_sample_mode: auto`` and ``autotune_method`` the fastest
    candidate timed on the run's own module, physical batch and device (or the choice kept from the start
    of the run), else ``resolve_method`` (the measured table, or what the config names).

    Distributed runs use the table: ranks timing on their own could choose different methods."""
    from smoothnet.privacy import method_select

    if config.grad_sample_mode != "auto" or not config.autotune_method or context.enabled:
        source = "config" if config.grad_sample_mode != "auto" else "table"
        return method_select.MethodChoice(resolve_method(config, device, image_size), source)
    if saved_choice is not None and saved_choice.device == device.type:
        return saved_choice
    k = max(config.augmentation_multiplicity, 1)
    methods = method_select.candidates(device.type, _needs_our_module(config), channels_last)
    return method_select.autotune(
        module, example_shape, config.physical_batch_size * k, device, methods, config.max_grad_norm
    )


def _timing_copy(module: nn.Module) -> nn.Module:
    """``module`` itself, or where it standardises with statistics not yet fitted a copy of it with
    placeholder ones (mean 0, variance 1): what the timing of a per-sample method needs, the run never
    sees."""
    layer = find_standardize(module)
    if layer is None or bool(layer.ready):
        return module
    probe = copy.deepcopy(module)
    standardize = find_standardize(probe)
    standardize.set_statistics(torch.zeros_like(standardize.mean), torch.ones_like(standardize.var))
    return probe


def release_free_memory() -> None:
    """Hand the pages the C allocator keeps after frees back to the OS (glibc's ``malloc_trim``), so one
    phase's transients do not stay resident under the next phase's peak; a no-op without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@torch.no_grad()
def _features(
    frontend: nn.Module,
    images: Tensor,
    mean: Tensor,
    std: Tensor,
    device: torch.device,
    batch_size: int = 128,  # kymatio transients: 0.43 GB extra per 1,024 images at 512, 0.17 GB at 128
) -> Tensor:
    """The frozen frontend's features of ``images``, written chunk by chunk into one preallocated tensor
    (a list of chunks then ``torch.cat`` would hold the features twice: 6.2 GB for CIFAR-10's ScatterNet)."""
    frontend.eval()
    if len(images) == 0:
        return torch.empty(0)
    first = frontend(normalize(images[:batch_size].to(device), mean, std))
    out = torch.empty((len(images), *first.shape[1:]), dtype=first.dtype, device=first.device)
    out[: len(first)] = first
    for i in range(batch_size, len(images), batch_size):
        out[i : i + batch_size] = frontend(normalize(images[i : i + batch_size].to(device), mean, std))
    return out


# ----------------------------------------------------------------------------- training


def _model_inputs(config: TrainConfig, run: PreparedRun, x: Tensor, device: torch.device) -> Tensor:
    x = x.to(device, non_blocking=True)
    if run.features_precomputed:
        return x
    x = normalize(x, run.mean, run.std)
    if config.augmentation_multiplicity:
        generator = run.streams.augmentation if run.streams is not None else None
        x = augmentation_views(x, config.augmentation_multiplicity, generator=generator)
    return x.contiguous(memory_format=torch.channels_last) if run.channels_last else x


def _train_one_epoch(
    config: TrainConfig, run: PreparedRun, state: RunState, device: torch.device, progress: bool
) -> tuple[float, float, int]:
    """One pass over the training set in logical batches split into physical ones."""
    run.module.train()
    k = max(config.augmentation_multiplicity, 1)
    total_loss, correct, seen = 0.0, 0.0, 0
    with run.training.physical_batches(config.physical_batch_size) as batches:
        bar = batch_progress(
            batches, desc=f"[{config.run_id}] epoch {state.epoch + 1}/{config.epochs}", enabled=progress
        )
        for x, y in bar:
            if len(y) == 0:
                run.training.empty_step()  # an empty Poisson batch still releases a noisy update
                state.steps += 1
                run.scheduler.after_step()
                continue
            inputs = _model_inputs(config, run, x, device)
            targets = y.to(device).repeat_interleave(k) if k > 1 else y.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.autocast_bf16):
                logits = run.training.model(inputs)
            logits = logits.float()  # loss, clipping, noise and the update in fp32
            loss, took_step = run.training.step(logits, targets, len(y), k, batches)
            _check_finite(config, run, state, loss, took_step)
            if took_step:
                state.steps += 1
                run.scheduler.after_step()
                if run.ema is not None:
                    run.ema.update_parameters(run.module)
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == targets).float().view(-1, k).mean(1).sum().item()
            seen += len(y)
            postfix = run.training.progress_postfix(total_loss / max(seen, 1))
            if postfix:  # none for a DP run
                bar.set_postfix(**postfix)
    return total_loss / max(seen, 1), correct / max(seen, 1), seen


def _check_finite(
    config: TrainConfig, run: PreparedRun, state: RunState, loss: Tensor, took_step: bool
) -> None:
    """Stop a diverged run, keeping the last good checkpoint (what counts: ``run.training.divergence``)."""
    what = run.training.divergence(loss, took_step)
    if what is None:
        return
    raise TrainingDiverged(
        f"run {config.run_id!r}: {what} in epoch {state.epoch + 1}; the last good checkpoint (previous "
        "epoch) is kept. Lower lr or max_grad_norm."
    )


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def accuracy(module: nn.Module, eval_set: EvalSet, mean: Tensor, std: Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``module`` on a split."""
    module.eval()
    correct = 0
    for i in range(0, len(eval_set.labels), batch_size):
        x = eval_set.inputs[i : i + batch_size]
        if not eval_set.normalised:
            x = normalize(x, mean, std)
        correct += (module(x).argmax(1) == eval_set.labels[i : i + batch_size]).sum().item()
    module.train()
    return correct / len(eval_set.labels)


def _evaluate_epoch(
    config: TrainConfig,
    run: PreparedRun,
    state: RunState,
    train_loss: float,
    train_accuracy: float,
    epoch_lr: float,
) -> dict[str, Any]:
    metrics: dict[str, Any] = {"epoch": state.epoch, "steps": state.steps}
    metrics.update(run.training.released_train_metrics(train_loss, train_accuracy))
    metrics["lr"] = epoch_lr  # the rate this epoch trained with (the scheduler has already stepped)
    for split, eval_set in run.eval_sets.items():
        metrics[f"{split}_accuracy"] = accuracy(run.module, eval_set, run.mean, run.std)
        if run.ema is not None:
            metrics[f"{split}_accuracy_ema"] = accuracy(run.ema.module, eval_set, run.mean, run.std)
    metrics["epsilon"] = run.training.epsilon(config)
    return metrics


# ----------------------------------------------------------------------------- logging


def _open_live(run_dir: Path, history: list[dict[str, Any]]):
    """A DVCLive logger; on resume the stored history is replayed so the curves have no gaps or repeats."""
    from dvclive import Live

    live = Live(dir=str(run_dir / "dvclive"), resume=False, save_dvc_exp=False, dvcyaml=None, report=None)
    for metrics in history:
        _log_live(live, metrics)
    return live


def _log_live(live, metrics: dict[str, Any]) -> None:
    for key, value in metrics.items():
        if key in ("epoch", "steps") or value is None:
            continue
        live.log_metric(
            key.replace("_", "/", 1) if key.startswith(("train_", "val_", "test_")) else key, value, plot=True
        )
    live.next_step()


def _epoch_line(config: TrainConfig, metrics: dict[str, Any], elapsed: float, remaining: float) -> str:
    eps = metrics.get("epsilon")
    parts = [f"[{config.run_id}] epoch {metrics['epoch']}/{config.epochs}"]
    if "train_loss" in metrics:
        parts.append(f"loss {metrics['train_loss']:.3f}")
    for split in ("val", "test"):
        if f"{split}_accuracy" in metrics:
            parts.append(f"{split} {100 * metrics[f'{split}_accuracy']:.2f}%")
    if eps is not None:
        parts.append(f"eps {eps:.3f} so far")
    parts.append(f"{format_duration(elapsed)} elapsed, ~{format_duration(remaining)} left")
    return "  ".join(parts)


# ----------------------------------------------------------------------------- record


def build_record(
    config: TrainConfig,
    run: PreparedRun,
    state: RunState,
    data,
    device: torch.device,
    paths: RunPaths,
    resolved_params: dict[str, Any] | None,
    profile: str,
) -> RunRecord:
    """The run record (schema: smoothnet.records.REQUIRED_FIELDS)."""
    private = config.private
    privacy = {
        "private": private,
        "target_epsilon": config.target_epsilon if private else None,
        "delta": config.delta if private else None,
        "noise_multiplier": None,
        "max_grad_norm": config.max_grad_norm if private else None,
        "sample_rate": None,
        "steps": state.steps,
        "planned_steps": config.epochs * len(run.train_loader),
        "sampling": "poisson" if (private and config.poisson_sampling) else "shuffle",
        "accountant": config.accountant if private else None,
        "epsilon": None,
        "epsilon_by_accountant": {},
        "grad_sample_mode": run.training.method,
        "method_choice": run.method_choice.to_record() if run.method_choice is not None else None,
        "expected_batch_size": None,
        "accountant_history": [],
        "steps_per_epoch": len(run.train_loader),
        "noise_source": None,
        **run.training.privacy_fields(config),
    }
    revision, dirty = git_state(paths.repo_root)
    peak = (
        torch.cuda.max_memory_allocated(device)
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return RunRecord(
        run_id=config.run_id,
        profile=profile,
        stage=f"train@{config.run_id}",
        params=resolved_params if resolved_params is not None else config.to_params(),
        model=ModelSection(
            name=config.model,
            options=dict(config.model_options),
            num_parameters=count_parameters(run.full_model),
            has_batchnorm=any(
                isinstance(m, nn.modules.batchnorm._BatchNorm) for m in run.full_model.modules()
            ),
        ),
        dataset=DatasetSection(
            name=config.dataset,
            fingerprint=dict(data.manifest.get("fingerprint", {})),
            manifest_sha256=data.manifest_sha256,
            n_train=run.n_train,
            n_val=0 if config.train_on_validation else data.count("val"),
            n_test=data.count("test"),
        ),
        privacy=PrivacySection(**privacy),
        training=TrainingSection(
            epochs=config.epochs,
            epochs_completed=state.epoch,
            logical_batch_size=config.logical_batch_size,
            physical_batch_size=config.physical_batch_size,
            seed=config.seed,
            optimizer=config.optimizer,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            lr_schedule=config.lr_schedule,
            lr_schedule_detail=run.scheduler.describe(),
            augmentation_multiplicity=config.augmentation_multiplicity,
            ema_decay=config.ema_decay,
            train_on_validation=config.train_on_validation,
            channels_last=run.channels_last,
            autocast_bf16=config.autocast_bf16,
        ),
        results=ResultsSection.from_history(state.history),
        performance=PerformanceSection(
            wall_time_s=round(state.train_seconds, 3),
            images_per_second=round(state.examples_seen / state.train_seconds, 3)
            if state.train_seconds
            else 0.0,
            peak_memory_bytes=int(peak),
            device=device_name(device),
        ),
        environment={**library_versions(), "git_revision": revision, "git_dirty": dirty},
    )
