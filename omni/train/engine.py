"""The training loop every stage shares (SPEC §4, §5).

A stage script defines a `Stage` (model, data, batch → loss, validation metric, final artifact) and calls
`run(MyStage)`. Everything else lives here, written once: config loading, distributed set-up, AMP and
compile, AdamW + warmup/cosine, gradient accumulation, clipping, non-finite handling, logging, validation,
atomic checkpoints, exact resume, and clean exit on Ctrl-C / SIGTERM.
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
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

from omni.config import ConfigError, TrainConfig, load_config, to_dict
from omni.data.base import BatchStream, to_device
from omni.train import checkpoint as ckpt
from omni.train import dist
from omni.train.log import RunLogger, format_metrics
from omni.train.optim import build_optimizer, build_scheduler


class Stage:
    """What a stage script supplies. `self.cfg`, `self.dist` (DistInfo) and `self.log` are set for it."""
    name = "model"                   # checkpoint prefix: <name>_step_N.pt
    config_cls = TrainConfig
    default_config = ""
    unit = "samples"                 # throughput unit, e.g. "tok"
    dynamic_shapes = False           # batches vary in length: torch.compile with dynamic shapes from the start
                                     # (one compile, not a static one and then a dynamic one)

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

    def train_data(self) -> BatchStream:
        raise NotImplementedError

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict, float]:
        """(scalar loss, extra metrics as floats or 0-d tensors, throughput units in this batch)."""
        raise NotImplementedError

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


def autocast_context(device: torch.device, enabled: bool, cpu: bool = False):
    """bf16 autocast on CUDA (fp16 where bf16 is missing); on CPU only with `cpu` (config cpu_amp) and a CPU
    with native bf16, else fp32."""
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if enabled and cpu and device.type == "cpu" and cpu_has_native_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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


class Trainer:
    def __init__(self, stage_cls, argv=None):
        args = parse_args(stage_cls, argv)
        try:
            self.cfg = stage_cls.configure(load_config(stage_cls.config_cls, args.config, args.overrides))
        except ConfigError as e:
            sys.exit(f"config error: {e}")
        self.fresh = args.fresh
        cfg = self.cfg
        self.dist = dist.setup(cfg.device)
        self.device = self.dist.device
        self.save_dir = Path(cfg.save_dir)
        self.log = RunLogger(self.save_dir, enabled=self.dist.is_main, stage=stage_cls.name)
        self.stage = stage_cls(cfg, self.dist, self.log, fresh=self.fresh)
        self.name = self.stage.name
        self.stop_signal = None

    # ---------------------------------------------------------------------------------------------
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

    def _state(self, step: int) -> dict:
        rngs = [ckpt.rng_state()]
        if self.dist.enabled:
            rngs = [None] * self.dist.world_size
            torch_dist.all_gather_object(rngs, ckpt.rng_state())
        return {
            "model": self.raw_model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "step": step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "samples_seen": self.samples_seen, "world_size": self.dist.world_size,
            "rng": rngs, "config": to_dict(self.cfg),
        }

    def save_step(self, step: int) -> None:
        state = self._state(step)  # collective under DDP: every rank takes part
        if self.dist.is_main:
            path = self.save_dir / f"{self.name}_step_{step}.pt"
            ckpt.atomic_save(state, path)
            ckpt.prune(self.save_dir, self.name, self.cfg.keep_checkpoints)
            self.log.info(f"saved checkpoint {path.name}")
        dist.barrier(self.dist)

    def _resume(self) -> int:
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
        try:
            self.raw_model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise RuntimeError(f"checkpoint {path} does not match this config's model: {e}\n"
                               f"use --fresh to start over, or a different save_dir") from None
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
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

    def _validate(self, step: int) -> dict:
        metrics = {}
        if self.dist.is_main:
            self.raw_model.eval()
            t0 = time.time()
            with preserved_rng(), torch.no_grad(), autocast_context(self.device, self.cfg.use_amp):
                metrics = self.stage.validate(self.raw_model)
            self.raw_model.train()
            if metrics:
                self.log.info(f"val step {step} | {format_metrics(metrics)} | {time.time() - t0:.1f}s")
                self.log.metrics({"step": step, "split": "val", **metrics})
        dist.barrier(self.dist)
        return metrics

    def _check_ranks_in_sync(self) -> None:
        """Under DDP every rank must end with identical weights; check it instead of assuming it."""
        if not self.dist.enabled:
            return
        h = hashlib.sha256()
        for t in self.raw_model.state_dict().values():
            h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())  # 0-d too
        digests = [None] * self.dist.world_size
        torch_dist.all_gather_object(digests, h.hexdigest())
        if len(set(digests)) != 1:
            raise RuntimeError(f"ranks ended with different weights: {digests}")
        self.log.info(f"weights identical across {self.dist.world_size} ranks (sha256 {digests[0][:16]})")

    # ---------------------------------------------------------------------------------------------
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
            gc.collect()
            dist.cleanup()
        if exit_code is not None:
            sys.exit(exit_code)

    def _run(self) -> None:
        cfg, log, device = self.cfg, self.log, self.device
        if self.dist.is_main:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            (self.save_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        self._seed()
        log.info(f"=== {self.name}: {' '.join(sys.argv)} | device {device} | world {self.dist.world_size}")
        if cfg.use_amp and cfg.cpu_amp and device.type == "cpu":
            log.info("cpu_amp: bf16 autocast on this CPU" if cpu_has_native_bf16() else
                     "WARNING: cpu_amp is set but this CPU has no native bf16 (AVX512-BF16 or AMX): training in fp32")
        self.stage.prepare()
        self._seed()  # whatever prepare() drew, the model starts from the same RNG state
        model = self.stage.build_model().to(device)
        self.raw_model = model
        n_params = sum(p.numel() for p in model.parameters())
        log.info(f"model: {n_params / 1e6:.2f}M parameters")
        ds = self.stage.train_data()
        ds.set_distributed(self.dist.rank, self.dist.world_size)
        accum = cfg.gradient_accumulation_steps
        per_epoch = ds.batches_per_epoch()
        if per_epoch == 0:
            raise RuntimeError(f"training data has {len(ds)} samples, fewer than one global batch "
                               f"({ds.global_batch}); lower batch_size or add data")
        total = cfg.max_steps or (cfg.max_epochs * per_epoch) // accum
        if total <= 0:
            raise ConfigError("set max_steps or max_epochs")
        log.info(f"data: {len(ds)} samples, {per_epoch} batches of {ds.global_batch} per epoch; "
                 f"{total} optimizer steps x {accum} accumulation")

        self.opt = build_optimizer(model, cfg.lr, cfg.wd, device)
        self.sched = build_scheduler(self.opt, cfg.warmup_steps, total, cfg.min_lr_ratio)
        amp_on = cfg.use_amp and device.type == "cuda"
        fp16 = amp_on and not torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda") if fp16 else None
        self.epoch, self.batch_in_epoch, self.samples_seen = 0, 0, 0
        step = self._resume()

        final_path = self.save_dir / f"{self.name}.pt"
        finished = lambda: step >= total or (cfg.max_epochs and self.epoch >= cfg.max_epochs)
        if finished() and final_path.exists():
            log.info(f"already complete at step {step} ({final_path}); use --set max_steps=N to train on "
                     f"or --fresh to start over")
            return

        fwd_model = model
        if cfg.use_compile and device.type == "cuda":
            fwd_model = torch.compile(fwd_model, dynamic=True if self.stage.dynamic_shapes else None)
            log.info("torch.compile on")
        if self.dist.enabled:
            fwd_model = DDP(fwd_model, device_ids=[device.index] if device.type == "cuda" else None)

        self._install_signals()
        loader = None
        bar = tqdm(total=total, initial=step, disable=not self.dist.is_main, desc=self.name,
                   dynamic_ncols=True, mininterval=2.0)
        nonfinite, units, bad, seen_in_window = 0, 0.0, 0, 0
        t_window = time.time()
        model.train()
        while not finished():
            epoch_done = False
            loss_sum, extra_sum = torch.zeros((), device=device), {}
            for micro in range(accum):
                if loader is None:
                    loader = self._make_loader(ds, self.epoch, self.batch_in_epoch)
                batch = next(loader)
                self.batch_in_epoch += 1
                if self.batch_in_epoch == per_epoch:  # epoch ends: next batch starts the next pass
                    self.epoch, self.batch_in_epoch, loader, epoch_done = self.epoch + 1, 0, None, True
                n_bad, n_samples = batch.pop("n_bad"), batch.pop("n_samples")
                bad += n_bad
                seen_in_window += n_samples
                self.samples_seen += n_samples * self.dist.world_size
                if not batch:  # every sample of this micro-batch was bad: nothing to learn from
                    if self.dist.enabled:  # the other ranks would wait forever in the gradient all-reduce
                        raise RuntimeError(f"rank {self.dist.rank}: every sample of a micro-batch was bad "
                                           f"at epoch {self.epoch}; see the skipped-sample warnings")
                    continue
                batch = to_device(batch, device)
                sync = micro == accum - 1
                no_sync = fwd_model.no_sync() if self.dist.enabled and not sync else contextlib.nullcontext()
                with no_sync:
                    with autocast_context(device, cfg.use_amp, cfg.cpu_amp):
                        loss, extra, n_units = self.stage.loss(fwd_model, batch)
                    scaled = loss / accum
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                loss_sum += loss.detach()
                units += float(n_units)
                for k, v in extra.items():
                    extra_sum[k] = extra_sum.get(k, 0.0) + (v.detach() if torch.is_tensor(v) else v)

            if self.scaler is not None:
                self.scaler.unscale_(self.opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
            loss_val = loss_sum.item() / accum
            bad_step = dist.all_reduce_max(float(not (math.isfinite(loss_val) and torch.isfinite(grad_norm))),
                                           self.dist) > 0
            if bad_step and self.scaler is None:
                nonfinite += 1
                log.info(f"WARNING: non-finite loss or gradient at step {step + 1} (loss {loss_val:.4g}, "
                         f"grad norm {float(grad_norm):.4g}); step skipped ({nonfinite} in a row)")
                if nonfinite >= cfg.max_nonfinite_steps:
                    raise RuntimeError(f"{nonfinite} non-finite steps in a row at step {step + 1}: "
                                       f"lower lr, check the data, or enable clipping")
            else:
                nonfinite = 0
                if self.scaler is not None:  # fp16: the scaler skips inf steps and lowers its scale itself
                    self.scaler.step(self.opt)
                    self.scaler.update()
                else:
                    self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.sched.step()
            step += 1
            bar.update(1)

            if step % cfg.print_freq == 0 or step == total:
                dt = time.time() - t_window
                rate = dist.all_reduce_mean(units / max(dt, 1e-9), self.dist) * self.dist.world_size
                rec = {"step": step, "epoch": self.epoch, "loss": loss_val,
                       "lr": self.sched.get_last_lr()[0], "grad_norm": float(grad_norm),
                       f"{self.stage.unit}/s": rate}
                rec.update({k: float(v) / accum for k, v in extra_sum.items()})
                if device.type == "cuda":  # peak since the start, so a later long batch shows too
                    rec["mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                log.info(f"step {step}/{total} | {format_metrics({k: v for k, v in rec.items() if k != 'step'})}")
                log.metrics(rec)
                bar.set_postfix(loss=f"{loss_val:.3f}")
                if bad:
                    self._report_bad(bad, seen_in_window)
                units, bad, seen_in_window, t_window = 0.0, 0, 0, time.time()

            if step % cfg.val_freq == 0 and step < total:
                self._validate(step)
            saved = step % cfg.checkpoint_freq == 0 or epoch_done or finished()
            if saved:
                self.save_step(step)
            if dist.all_reduce_max(float(self.stop_signal is not None), self.dist) > 0:
                if not saved:
                    self.save_step(step)
                bar.close()
                sig = signal.Signals(self.stop_signal).name if self.stop_signal else "a signal on another rank"
                log.info(f"stopped by {sig} at step {step}; checkpoint saved; rerun the same command to resume")
                sys.exit(130 if self.stop_signal == signal.SIGINT else 143)
        bar.close()

        self._validate(step)
        self._check_ranks_in_sync()
        if self.dist.is_main:
            ckpt.atomic_save(self.stage.artifact(model), final_path)
            log.info(f"wrote {final_path}")
        dist.barrier(self.dist)

    def _report_bad(self, bad: int, seen: int) -> None:
        frac = bad / max(seen, 1)
        self.log.info(f"skipped {bad} bad samples of {seen} in the last window ({frac:.1%})")
        if frac > self.cfg.max_bad_fraction:
            raise RuntimeError(f"{frac:.1%} of samples were bad, over max_bad_fraction "
                               f"{self.cfg.max_bad_fraction:.1%}; see the warnings above for the files")


def run(stage_cls, argv=None) -> None:
    """Entry point of every stage script. Errors a user can fix (a missing file, a bad config or checkpoint)
    end the run with one clear line instead of a traceback."""
    try:
        Trainer(stage_cls, argv).run()
    except (ConfigError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
