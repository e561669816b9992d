"""The training loop every stage shares.

A stage script defines a `Stage` (model, data, batch → loss, validation metric, final artifact) and calls
`run(MyStage)`. Everything else lives here, written once: config loading, distributed set-up, AMP and
compile, AdamW + warmup/cosine, gradient accumulation, clipping, non-finite handling, logging, validation,
atomic checkpoints, exact resume, and clean exit on Ctrl-C / SIGTERM.

A run goes through named phases (`Trainer._run`): set up, build the model, plan the steps, build the
optimizers, resume, wrap (compile, DDP), train, finish. A stage trains with one AdamW by default; it can
declare several (`Stage.optimizers`: a GAN's generator and discriminators, each with its own parameter
groups, learning rates, schedule and scaler) and say which of them step, in what order, at each step
(`Stage.steps`); every one is saved in the step checkpoints and resumed exactly.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import hashlib
import json
import math
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

from omni.artifacts import FORMAT, KINDS, check_entries
from omni.config import ConfigError, TrainConfig, load_config, to_dict
from omni.data.base import BatchStream, to_device
from omni.errors import UserError, exit_on_user_error
from omni.models.layers import keep_out_of_graph, use_sdpa
from omni.train import checkpoint as ckpt
from omni.train import dist
from omni.train.log import RunLogger, format_metrics
from omni.train.optim import OptimizerSpec, build_from_spec, build_scheduler


class Stage:
    """What a stage script supplies. `self.cfg`, `self.dist` (DistInfo) and `self.log` are set for it."""
    name = "model"                   # checkpoint prefix: <name>_step_N.pt
    config_cls = TrainConfig
    default_config = ""
    unit = "samples"                 # throughput unit, e.g. "tok"
    dynamic_shapes = False           # batches vary in length: torch.compile with dynamic shapes from the start
                                     # (one compile, not a static one and then a dynamic one)
    unused_parameters = False        # some parameters get no gradient in some batches (SFT rows without audio,
                                     # a GAN's generator in the discriminator's step): DDP must look for them
    frozen_from = ()                 # state-dict prefixes of frozen parts read from another artifact: on resume
                                     # they must equal that artifact now (it was not retrained in between)

    def __init__(self, cfg, info: dist.DistInfo, log: RunLogger, fresh: bool = False):
        self.cfg, self.dist, self.log = cfg, info, log
        self.fresh = fresh  # --fresh: prepare() should also rebuild what it made itself (a tokenizer)

    @classmethod
    def configure(cls, cfg):
        """The config this stage trains with, from the loaded file (a script running two stages from one file
        maps the second's keys onto the shared ones here)."""
        return cfg

    def prepare(self) -> None:
        """One-time work before the model exists (tokenizers, caches). Runs on every rank."""

    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def train_data(self, model) -> BatchStream:
        """The training stream. `model` is the built model, for a stage that prepares data with it (SFT runs
        its frozen encoders over the media once)."""
        raise NotImplementedError

    def optimizers(self, model) -> dict[str, OptimizerSpec]:
        """The optimizers, by name; the first is the primary (its loss and lr are logged as `loss`, `lr`).
        Default: one AdamW over every trainable parameter at the config's lr."""
        return {"main": OptimizerSpec([(model, self.cfg.lr)])}

    def steps(self, step: int) -> list[str] | None:
        """The optimizers that step at optimizer step `step` (0-based), in order. None: all, as declared."""
        return None

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict, float]:
        """(scalar loss, extra metrics as floats or 0-d tensors, throughput units in this batch)."""
        raise NotImplementedError

    def optimizer_loss(self, name: str, model, batch: dict, step: int) -> tuple[torch.Tensor, dict, float]:
        """The loss whose gradient optimizer `name` steps on at optimizer step `step` (0-based, as in `steps`;
        every parameter's gradient is zeroed before each optimizer's turn). A stage with one optimizer writes
        `loss` only. A batch dict is shared by the optimizers of one step, so a stage may leave in it what a
        later one reuses (a generator's output)."""
        return self.loss(model, batch)

    @torch.no_grad()
    def validate(self, model) -> dict:
        """Metrics on the whole validation split. Runs on rank 0 with the unwrapped model in eval mode."""
        return {}

    def artifact(self, model) -> dict:
        """The final artifact: weights plus whatever rebuilds and uses the model."""
        return {"model": model.state_dict(), "config": to_dict(self.cfg)}


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run faster than fp32 (elsewhere they are emulated, and slower). Probed
    once: autocast_context asks at every step."""
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def autocast_context(device: torch.device, cfg: TrainConfig, training: bool = True):
    """The precision a step runs in: bf16 autocast on CUDA (fp16 where bf16 is missing) and on the CPU with
    `gpu_path`; in training on a CPU with native bf16 when `cpu_amp` is set; else fp32. Off without use_amp."""
    if cfg.use_amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if cfg.use_amp and device.type == "cpu" and (cfg.gpu_path or training and cfg.cpu_amp and cpu_has_native_bf16()):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compiles(device: torch.device, cfg: TrainConfig) -> bool:
    """torch.compile on CUDA, and on the CPU under `gpu_path`, when use_compile is set."""
    return cfg.use_compile and (device.type == "cuda" or cfg.gpu_path)


@contextlib.contextmanager
def preserved_rng():
    """Validation may sample; it must never shift the training RNG streams (resume exactness)."""
    py, npy = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        yield
    random.setstate(py)
    np.random.set_state(npy)


def parse_args(stage_cls, argv=None):
    p = argparse.ArgumentParser(description=(stage_cls.__doc__ or "").strip().splitlines()[0] if stage_cls.__doc__ else None)
    p.add_argument("--config", default=stage_cls.default_config or None, help="JSON config file")
    p.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set lr=1e-3 model.n_layers=2")
    p.add_argument("--fresh", action="store_true", help="discard existing step checkpoints and start over")
    args = p.parse_args(argv)
    args.overrides = [o for group in args.overrides for o in group]
    return args


def _worker_init(_):
    # Ctrl-C goes to the whole process group; the main process handles it, workers must not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class Optim:
    """One optimizer as the engine runs it: AdamW, its schedule, its fp16 scaler (None under bf16 / fp32), the
    parameters it clips, and the clipping norm."""
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    params: list
    max_grad_norm: float


class Trainer:
    def __init__(self, stage_cls, argv=None):
        args = parse_args(stage_cls, argv)
        self.cfg = stage_cls.configure(load_config(stage_cls.config_cls, args.config, args.overrides))
        self.fresh = args.fresh
        cfg = self.cfg
        self.dist = dist.setup(cfg.device)
        self.device = self.dist.device
        self.save_dir = Path(cfg.save_dir)
        self.log = RunLogger(self.save_dir, enabled=self.dist.is_main, stage=stage_cls.name)
        self.stage = stage_cls(cfg, self.dist, self.log, fresh=self.fresh)
        self.name = self.stage.name
        self.stop_signal = None
        self.final_path = self.save_dir / (KINDS[self.name].filename if self.name in KINDS else f"{self.name}.pt")

    def run(self) -> None:
        exit_code = None
        try:
            self._run()
        except SystemExit as e:  # stopped by a signal: let go of _run's frame, and its DDP wrapper, first
            exit_code = e.code
        finally:
            for sig, old in getattr(self, "_old_handlers", {}).items():
                signal.signal(sig, old)
            self.log.close()
            # DDP's reducer holds the process group; free it while the interpreter is alive, or gloo's worker
            # threads may be torn down during interpreter finalisation (SIGABRT "terminate called without an
            # active exception" after a finished run, seen once in 2 ranks on CPU)
            self.fwd_model = None
            gc.collect()
            dist.cleanup()
        if exit_code is not None:
            sys.exit(exit_code)

    def _run(self) -> None:
        self._prepare()
        self.step = self._resume()
        if self._finished() and self.final_path.exists():
            self.log.info(f"already complete at step {self.step} ({self.final_path}); use --set max_steps=N to "
                          f"train on or --fresh to start over")
            return
        self._wrap_model()
        self._train()
        self._finish()

    # --- phases ----------------------------------------------------------------------------------
    def _prepare(self) -> None:
        """Everything before the weights are resumed: what training and benchmark() both start from."""
        self._set_up()
        self._build_model()
        self._plan()
        self._build_optimizers()

    def _set_up(self) -> None:
        """save_dir, the resolved config.json, TF32, the seeds; the run's first lines in training.log."""
        cfg, log = self.cfg, self.log
        if self.dist.is_main:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            (self.save_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        self._seed()
        log.info(f"=== {self.name}: {' '.join(sys.argv)} | device {self.device} | world {self.dist.world_size}")
        if self.device.type == "cpu" and cfg.gpu_path:
            log.info("gpu_path: on the CPU as on a GPU: " + ", ".join(
                n for n, on in (("bf16 autocast", cfg.use_amp), ("torch.compile", cfg.use_compile)) if on))
        elif cfg.use_amp and cfg.cpu_amp and self.device.type == "cpu":
            log.info("cpu_amp: bf16 autocast on this CPU" if cpu_has_native_bf16() else
                     "WARNING: cpu_amp is set but this CPU has no native bf16 (AVX512-BF16 or AMX): training in fp32")

    def _build_model(self) -> None:
        """The stage's one-time preparation, then its model, from the same RNG state whatever prepare() drew;
        attention through SDPA unless the config's use_flash is off."""
        self.stage.prepare()
        self._seed()
        self.model = use_sdpa(self.stage.build_model(), self.cfg.use_flash).to(self.device)
        n_params = sum(p.numel() for p in self.model.parameters())
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.log.info(f"model: {n_params / 1e6:.2f}M parameters" +
                      (f", {n_train / 1e6:.2f}M trained" if n_train != n_params else "") +
                      ("" if self.cfg.use_flash else "; explicit attention (use_flash false)"))

    def _plan(self) -> None:
        """The training stream and the number of optimizer steps."""
        cfg = self.cfg
        self.ds = ds = self.stage.train_data(self.model)
        ds.set_distributed(self.dist.rank, self.dist.world_size)
        self.per_epoch = ds.batches_per_epoch()
        if self.per_epoch == 0:
            raise UserError(f"training data has {len(ds)} samples, fewer than one global batch "
                            f"({ds.global_batch}); lower batch_size or add data")
        self.total = cfg.max_steps or (cfg.max_epochs * self.per_epoch) // cfg.gradient_accumulation_steps
        if self.total <= 0:
            raise ConfigError("set max_steps or max_epochs")
        self.log.info(f"data: {len(ds)} samples, {self.per_epoch} batches of {ds.global_batch} per epoch; "
                      f"{self.total} optimizer steps x {cfg.gradient_accumulation_steps} accumulation")

    def _build_optimizers(self) -> None:
        """The stage's optimizers, each with its schedule and (fp16 only) its gradient scaler."""
        cfg, device = self.cfg, self.device
        specs = self.stage.optimizers(self.model)
        if not specs:
            raise ValueError(f"stage {self.name} declared no optimizer")
        fp16 = cfg.use_amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
        self.optims, seen = {}, set()
        for name, spec in specs.items():
            opt = build_from_spec(spec, cfg.wd if spec.wd is None else spec.wd, device, seen)
            sched = build_scheduler(opt, cfg.warmup_steps if spec.warmup_steps is None else spec.warmup_steps,
                                    spec.total_steps or self.total,
                                    cfg.min_lr_ratio if spec.min_lr_ratio is None else spec.min_lr_ratio)
            clip = cfg.max_grad_norm if spec.max_grad_norm is None else spec.max_grad_norm
            # clipped in the model's parameter order: the total norm sums per-tensor norms, and another order
            # rounds differently (a changed clipping factor in the last bit breaks bitwise reproducibility)
            mine = {id(p) for g in opt.param_groups for p in g["params"]}
            self.optims[name] = Optim(opt, sched, torch.amp.GradScaler("cuda") if fp16 else None,
                                      [p for p in self.model.parameters() if id(p) in mine], clip)
        self.primary = next(iter(self.optims))
        if len(self.optims) > 1:
            self.log.info("optimizers: " + ", ".join(
                f"{n} ({sum(p.numel() for p in o.params) / 1e6:.2f}M)" for n, o in self.optims.items()))

    def _resume(self) -> int:
        """--fresh clears the folder's step checkpoints; else the newest readable one restores everything."""
        self.epoch, self.batch_in_epoch, self.samples_seen = 0, 0, 0
        if self.fresh:
            if self.dist.is_main:
                for _, p in ckpt.step_checkpoints(self.save_dir, self.name):
                    p.unlink()
                self.log.truncate_metrics_after(-1)
                self.log.info("--fresh: removed earlier step checkpoints and metrics")
            dist.barrier(self.dist)
            return 0
        state, path = ckpt.load_newest_valid(self.save_dir, self.name, log=self.log.info)
        if state is None:
            return 0
        prefixes = tuple(self.stage.frozen_from)
        own = self.model.state_dict() if prefixes else {}
        changed = [k for k, v in state["model"].items()
                   if k.startswith(prefixes) and k in own and not torch.equal(v, own[k])] if prefixes else []
        if changed:
            raise ckpt.CheckpointError(f"checkpoint {path} holds another {changed[0].split('.')[0]} than the artifact "
                                       f"this config reads now: it changed since the run started; use --fresh "
                                       f"to train against the new one")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise ckpt.CheckpointError(f"checkpoint {path} does not match this config's model: {e}\n"
                               f"use --fresh to start over, or a different save_dir") from None
        if set(state["optimizers"]) != set(self.optims):
            raise ckpt.CheckpointError(f"checkpoint {path} holds optimizers {sorted(state['optimizers'])}, this stage "
                               f"trains {sorted(self.optims)}; use --fresh to start over")
        for name, o in self.optims.items():
            o.opt.load_state_dict(state["optimizers"][name])
            o.sched.load_state_dict(state["schedulers"][name])
            if o.scaler is not None and state["scalers"].get(name):
                o.scaler.load_state_dict(state["scalers"][name])
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.samples_seen = state["samples_seen"]
        rngs = state["rng"]
        if state["world_size"] != self.dist.world_size:
            self.log.info(f"WARNING: checkpoint was written with {state['world_size']} ranks, now "
                          f"{self.dist.world_size}: batches will differ from an uninterrupted run")
        ckpt.set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])
        step = state["step"]
        self.log.truncate_metrics_after(step)
        self.log.info(f"resumed from {path.name}: step {step}, epoch {self.epoch}, "
                      f"batch {self.batch_in_epoch} of the epoch, {self.samples_seen} samples seen")
        return step

    def _wrap_model(self) -> None:
        """torch.compile (CUDA, gpu_path) and DDP around the model the stage's loss is called with."""
        cfg, device = self.cfg, self.device
        self.fwd_model = self.model
        if compiles(device, cfg):
            if cfg.compile_backend not in torch._dynamo.list_backends(exclude_tags=()):
                raise ConfigError(f"compile_backend {cfg.compile_backend!r} is not a torch.compile backend; "
                                  f"use inductor or aot_eager")
            keep_out_of_graph()
            self.fwd_model = torch.compile(self.fwd_model, dynamic=True if self.stage.dynamic_shapes else None,
                                           backend=cfg.compile_backend)
            self.log.info("torch.compile on" + ("" if cfg.compile_backend == "inductor" else
                                                f" ({cfg.compile_backend})"))
        if self.dist.enabled:
            self.fwd_model = DDP(self.fwd_model, device_ids=[device.index] if device.type == "cuda" else None,
                                 find_unused_parameters=self.stage.unused_parameters)

    def _train(self) -> None:
        """Optimizer steps until max_steps / max_epochs: fetch the step's micro-batches, step each optimizer the
        stage names, log, validate, checkpoint, and stop cleanly on a signal."""
        cfg = self.cfg
        self._install_signals()
        self.loader = None
        self.bar = tqdm(total=self.total, initial=self.step, disable=not self.dist.is_main, desc=self.name,
                        dynamic_ncols=True, mininterval=2.0)
        self.nonfinite = 0
        self.window = self._new_window()
        self.model.train()
        while not self._finished():
            record, epoch_done = self._train_step()
            self.bar.update(1)
            if self.step % cfg.print_freq == 0 or self.step == self.total:
                self._log_step(record)
            if self.step % cfg.val_freq == 0 and self.step < self.total:
                self._validate()
            saved = self.step % cfg.checkpoint_freq == 0 or epoch_done or self._finished()
            if saved:
                self.save_step()
            if dist.all_reduce_max(float(self.stop_signal is not None), self.dist) > 0:
                self._stop(saved)
        self.bar.close()

    def _finish(self) -> None:
        """Final validation, the ranks' agreement, and the final artifact (with its kind and format)."""
        self._validate()
        self._check_ranks_in_sync()
        if self.dist.is_main:
            artifact = {"kind": self.name, "format": FORMAT, **self.stage.artifact(self.model)}
            check_entries(artifact, self.final_path)  # a stage that forgets an entry fails here, not at loading
            ckpt.atomic_save(artifact, self.final_path)
            self.log.info(f"wrote {self.final_path}")
        dist.barrier(self.dist)

    def benchmark(self, steps: int, warmup: int = 2) -> dict:
        """Time `steps` optimizer steps after `warmup` ones (torch.compile, the allocator), each as training runs
        it: the stage's data stream, loss and optimizers, with the config's AMP and compile settings. Nothing is
        resumed, validated or saved. → {"steps/s", "<unit>/s", "loss", "params_M"[, "peak_mem_GB"]}"""
        try:
            self._prepare()
            self.step, self.epoch, self.batch_in_epoch, self.samples_seen = 0, 0, 0, 0
            self._wrap_model()
            self.loader, self.nonfinite = None, 0
            self.model.train()
            self.window = self._new_window()
            for i in range(warmup + steps):
                if i == warmup:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    self.window = self._new_window()
                record, _ = self._train_step()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            dt = time.perf_counter() - self.window["t"]
        finally:
            self.log.close()
        row = {"steps/s": steps / dt, f"{self.stage.unit}/s": self.window["units"] / dt, "loss": record["loss"],
               "params_M": sum(p.numel() for p in self.model.parameters()) / 1e6}
        if self.device.type == "cuda":
            row["peak_mem_GB"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return row

    # --- one step --------------------------------------------------------------------------------
    def _train_step(self) -> tuple[dict, bool]:
        """One optimizer step: fetch its micro-batches, step each optimizer the stage names. → (its log
        entries, whether the epoch ended)."""
        batches, epoch_done = self._fetch()
        record = {}
        for i, name in enumerate(self.stage.steps(self.step) or self.optims):
            record.update(self._optimizer_step(name, batches, count_units=i == 0))
        self.step += 1
        return record, epoch_done

    def _fetch(self) -> tuple[list[dict], bool]:
        """The step's gradient_accumulation_steps micro-batches on the device (all-bad ones left out), and
        whether the epoch ended with them."""
        batches, epoch_done = [], False
        for _ in range(self.cfg.gradient_accumulation_steps):
            if self.loader is None:
                self.loader = self._make_loader(self.ds, self.epoch, self.batch_in_epoch)
            batch = next(self.loader)
            self.batch_in_epoch += 1
            if self.batch_in_epoch == self.per_epoch:  # epoch ends: next batch starts the next pass
                self.epoch, self.batch_in_epoch, self.loader, epoch_done = self.epoch + 1, 0, None, True
            n_bad, n_samples = batch.pop("n_bad"), batch.pop("n_samples")
            self.window["reasons"] += batch.pop("bad", [])
            self.window["bad"] += n_bad
            self.window["seen"] += n_samples
            self.samples_seen += n_samples * self.dist.world_size
            if not batch:  # every sample of this micro-batch was bad: nothing to learn from
                if self.dist.enabled:  # the other ranks would wait forever in the gradient all-reduce
                    raise UserError(f"rank {self.dist.rank}: every sample of a micro-batch was bad "
                                    f"at epoch {self.epoch}; see the skipped-sample warnings")
                continue
            batches.append(to_device(batch, self.device))
        return batches, epoch_done

    def _optimizer_step(self, name: str, batches: list[dict], count_units: bool) -> dict:
        """Accumulate optimizer `name`'s loss over the micro-batches, clip, and step it, or skip the step when
        the loss or gradient is not finite. Returns its log entries."""
        cfg, o, accum = self.cfg, self.optims[name], self.cfg.gradient_accumulation_steps
        self.model.zero_grad(set_to_none=True)  # also what another optimizer's loss left on these parameters
        loss_sum, extra_sum = torch.zeros((), device=self.device), {}
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1
            no_sync = self.fwd_model.no_sync() if self.dist.enabled and not sync else contextlib.nullcontext()
            with no_sync:
                with autocast_context(self.device, cfg):
                    loss, extra, n_units = self.stage.optimizer_loss(name, self.fwd_model, batch, self.step)
                scaled = loss / accum
                (o.scaler.scale(scaled) if o.scaler else scaled).backward()
            loss_sum += loss.detach()
            if count_units:
                self.window["units"] += float(n_units)
            for k, v in extra.items():
                extra_sum[k] = extra_sum.get(k, 0.0) + (v.detach() if torch.is_tensor(v) else v)
        if o.scaler is not None:
            o.scaler.unscale_(o.opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(o.params, o.max_grad_norm if o.max_grad_norm > 0 else float("inf"))
        loss_val = loss_sum.item() / accum
        bad = dist.all_reduce_max(float(not (math.isfinite(loss_val) and torch.isfinite(grad_norm))), self.dist) > 0
        if bad and o.scaler is None:
            self.nonfinite += 1
            self.log.info(f"WARNING: non-finite loss or gradient at step {self.step + 1} ({name}: loss "
                          f"{loss_val:.4g}, grad norm {float(grad_norm):.4g}); step skipped ({self.nonfinite} in a row)")
            if self.nonfinite >= cfg.max_nonfinite_steps:
                raise RuntimeError(f"{self.nonfinite} non-finite steps in a row at step {self.step + 1}: "
                                   f"lower lr, check the data, or enable clipping")
        else:
            self.nonfinite = 0
            if o.scaler is not None:  # fp16: the scaler skips inf steps and lowers its scale itself
                o.scaler.step(o.opt)
                o.scaler.update()
            else:
                o.opt.step()
        o.opt.zero_grad(set_to_none=True)
        o.sched.step()
        prefix = "" if name == self.primary else f"{name}/"
        return {f"{prefix}loss": loss_val, f"{prefix}lr": o.sched.get_last_lr()[0],
                f"{prefix}grad_norm": float(grad_norm), **{k: float(v) / accum for k, v in extra_sum.items()}}

    def _log_step(self, record: dict) -> None:
        w = self.window
        dt = time.perf_counter() - w["t"]
        rate = dist.all_reduce_mean(w["units"] / max(dt, 1e-9), self.dist) * self.dist.world_size
        rec = {"step": self.step, "epoch": self.epoch, **record, f"{self.stage.unit}/s": rate}
        if self.device.type == "cuda":  # peak since the start, so a later long batch shows too
            rec["mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        shown = {k: v for k, v in rec.items() if k != "step"}
        self.log.info(f"step {self.step}/{self.total} | {format_metrics(shown)}")
        self.log.metrics({**rec, "steps/s": (self.step - w["step"]) / max(dt, 1e-9)})
        if "loss" in record:
            self.bar.set_postfix(loss=f"{record['loss']:.3f}")
        if w["bad"]:
            self._report_bad(w["bad"], w["seen"], w["reasons"])
        self.window = self._new_window()

    def _new_window(self) -> dict:
        """What the steps since the last log line add up: throughput units, bad samples, the start."""
        return {"units": 0.0, "bad": 0, "seen": 0, "reasons": [], "t": time.perf_counter(), "step": self.step}

    def _report_bad(self, bad: int, seen: int, reasons: list[str]) -> None:
        """Skipped samples into training.log (the first few by name), and a stop past max_bad_fraction."""
        for r in reasons[:5]:
            self.log.info(f"WARNING: skipped {r}")
        if len(reasons) > 5:
            self.log.info(f"... and {len(reasons) - 5} more")
        frac = bad / max(seen, 1)
        self.log.info(f"skipped {bad} bad samples of {seen} in the last window ({frac:.1%})")
        if frac > self.cfg.max_bad_fraction:
            raise UserError(f"{frac:.1%} of samples were bad, over max_bad_fraction "
                            f"{self.cfg.max_bad_fraction:.1%}; see the warnings above for the files")

    def _stop(self, saved: bool) -> None:
        if not saved:
            self.save_step()
        self.bar.close()
        sig = signal.Signals(self.stop_signal).name if self.stop_signal else "a signal on another rank"
        self.log.info(f"stopped by {sig} at step {self.step}; checkpoint saved; rerun the same command to resume")
        sys.exit(130 if self.stop_signal == signal.SIGINT else 143)

    # --- helpers ---------------------------------------------------------------------------------
    def _finished(self) -> bool:
        return self.step >= self.total or bool(self.cfg.max_epochs and self.epoch >= self.cfg.max_epochs)

    def _seed(self):
        random.seed(self.cfg.seed)
        np.random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)

    def _install_signals(self):
        self._old_handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C means now
            self.stop_signal = signum
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def _make_loader(self, ds: BatchStream, epoch: int, batch_in_epoch: int):
        ds.set_epoch(epoch)
        ds.skip_samples = batch_in_epoch * ds.global_batch
        nw = self.cfg.num_workers
        return iter(DataLoader(ds, batch_size=None, num_workers=nw, pin_memory=self.device.type == "cuda",
                               worker_init_fn=_worker_init if nw else None,
                               prefetch_factor=4 if nw else None, persistent_workers=False,
                               # its own generator: creating a loader must not draw from the global RNG,
                               # or a resumed run (which creates one at a different moment) would diverge
                               generator=torch.Generator()))

    def _state(self) -> dict:
        rngs = [ckpt.rng_state()]
        if self.dist.enabled:
            rngs = [None] * self.dist.world_size
            torch_dist.all_gather_object(rngs, ckpt.rng_state())
        return {
            "model": self.model.state_dict(),
            "optimizers": {n: o.opt.state_dict() for n, o in self.optims.items()},
            "schedulers": {n: o.sched.state_dict() for n, o in self.optims.items()},
            "scalers": {n: o.scaler.state_dict() if o.scaler is not None else {} for n, o in self.optims.items()},
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "samples_seen": self.samples_seen, "world_size": self.dist.world_size,
            "rng": rngs, "config": to_dict(self.cfg),
        }

    def save_step(self) -> None:
        state = self._state()  # collective under DDP: every rank takes part
        if self.dist.is_main:
            path = self.save_dir / f"{self.name}_step_{self.step}.pt"
            ckpt.atomic_save(state, path)
            ckpt.prune(self.save_dir, self.name, self.cfg.keep_checkpoints)
            self.log.info(f"saved checkpoint {path.name}")
        dist.barrier(self.dist)

    def _validate(self) -> dict:
        metrics = {}
        if self.dist.is_main:
            self.model.eval()
            t0 = time.time()
            with preserved_rng(), torch.no_grad(), autocast_context(self.device, self.cfg, training=False):
                metrics = self.stage.validate(self.model)
            self.model.train()
            if metrics:
                self.log.info(f"val step {self.step} | {format_metrics(metrics)} | {time.time() - t0:.1f}s")
                self.log.metrics({"step": self.step, "split": "val", **metrics})
        dist.barrier(self.dist)
        return metrics

    def _check_ranks_in_sync(self) -> None:
        """Under DDP every rank must end with identical weights; check it instead of assuming it."""
        if not self.dist.enabled:
            return
        h = hashlib.sha256()
        for t in self.model.state_dict().values():
            h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())  # 0-d too
        digests = [None] * self.dist.world_size
        torch_dist.all_gather_object(digests, h.hexdigest())
        if len(set(digests)) != 1:
            raise RuntimeError(f"ranks ended with different weights: {digests}")
        self.log.info(f"weights identical across {self.dist.world_size} ranks (sha256 {digests[0][:16]})")


def run(stage_cls, argv=None) -> None:
    """Entry point of every stage script. Errors a user can fix (omni.errors.UserError: a bad config, data file
    or checkpoint; a missing file) end the run with one clear line; any other error keeps its traceback."""
    with exit_on_user_error():
        Trainer(stage_cls, argv).run()
