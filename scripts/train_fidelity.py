#!/usr/bin/env python
"""Train the fidelity model (a small diffusers Wan transformer) on procedural shape videos.

Flow matching directly on 8 x 32 x 32 RGB pixel videos (no VAE): ``x_t = (1 - t) x0 + t noise``,
the model sees ``timestep = 1000 t`` and predicts the velocity ``noise - x0`` (the convention of
``ditcompile.fidelity.model.sample``). Every step draws a fresh batch from
``ditcompile.fidelity.videos.generate_videos`` (infinite data, deterministic from --seed).

At the end it keeps the better of the raw and the EMA weights (by a fixed held-out loss),
writes them to --out (safetensors, config in the metadata; written atomically, and writing the
shipped file also records its SHA-256 in ``fidelity_wan.safetensors.sha256``, which
``load_fidelity_model`` checks), prints the final loss and how
concentrated the self-attention is per layer, and writes a PNG strip of samples next to the
weights (``<out stem>_samples.png``).

    # the shipped weights: CPU, 1 thread, stopped by the clock at step 1970 of 2000 (33 min)
    python scripts/train_fidelity.py --max-minutes 33
    python scripts/train_fidelity.py --steps 50 --out /tmp/f.safetensors   # a quick smoke run

On the 2-core dev machine (shared) one step of batch 8 takes ~1.0-1.4 s on one thread. With
--max-minutes the cosine schedule follows the clock as well as the step count, so a run cut
short still ends at the low learning rate (which makes CPU runs depend on the machine's speed).
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time

import torch

from ditcompile.cli import device_arg, float_in_range, non_negative_int, output_file, positive_int
from ditcompile.demo import resolve_device
from ditcompile.fidelity.attention import attention_locality, format_locality
from ditcompile.fidelity.model import (
    FIDELITY_CONFIG,
    WEIGHTS_PATH,
    build_fidelity_model,
    flow_matching_loss,
    sample,
    save_fidelity_weights,
)
from ditcompile.fidelity.videos import generate_videos, label_name, label_of, save_strip

EVAL_SEED = 987_654_321


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=positive_int, default=2000, help="optimizer steps (default 2000)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--lr", type=float_in_range(0, low_open=True), default=2e-3, help="peak learning rate (AdamW)")
    p.add_argument("--warmup", type=non_negative_int, default=150, help="linear warm-up steps")
    p.add_argument("--min-lr-ratio", type=float_in_range(0, 1), default=0.05, help="cosine decays to lr * this")
    p.add_argument("--weight-decay", type=float_in_range(0), default=0.01)
    p.add_argument("--ema", type=float_in_range(0, 1, high_open=True), default=0.998, help="EMA decay (0 disables)")
    p.add_argument("--label-dropout", type=float_in_range(0, 1), default=0.1, help="null-prompt rate (for guidance)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", type=output_file, default=WEIGHTS_PATH,
                   help=f"weights file (default {WEIGHTS_PATH}; writing it also records its SHA-256 next to it)")
    p.add_argument("--device", type=device_arg, default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=non_negative_int, default=1,
                   help="CPU threads for torch (default 1: the dev machine is shared; 0 = torch's default)")
    p.add_argument("--max-minutes", type=float_in_range(0), default=0.0,
                   help="stop early (and still save) after this much training time; 0 = no limit")
    p.add_argument("--log-every", type=positive_int, default=25)
    p.add_argument("--save-every", type=non_negative_int, default=200,
                   help="checkpoint to --out every N steps (0: only at the end)")
    p.add_argument("--sample-steps", type=positive_int, default=20, help="Euler steps for the PNG samples")
    p.add_argument("--guidance", type=float_in_range(0), default=1.0, help="classifier-free guidance for the PNG")
    p.add_argument("--layers", type=positive_int, default=FIDELITY_CONFIG["num_layers"])
    p.add_argument("--ffn-dim", type=positive_int, default=FIDELITY_CONFIG["ffn_dim"])
    return p.parse_args(argv)


def lr_at(step: int, args, elapsed_s: float = 0.0) -> float:
    """Linear warm-up, then cosine to ``lr * min_lr_ratio``. With --max-minutes the cosine follows
    whichever runs out first, the steps or the time, so a run cut short by the clock still ends
    at the low learning rate."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = (step - args.warmup) / max(1, args.steps - args.warmup)
    if args.max_minutes:
        frac = max(frac, elapsed_s / (60 * args.max_minutes))
    frac = min(frac, 1.0)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


@torch.no_grad()
def held_out_loss(model, device, n: int = 32, seed: int = EVAL_SEED) -> float:
    """Flow-matching loss on a fixed batch at fixed times 0.05 .. 0.95 (no label dropout)."""
    was_training = model.training
    model.eval()
    batch = generate_videos(n, seed=seed, device=device)
    t = torch.linspace(0.05, 0.95, n)
    g = torch.Generator(device="cpu").manual_seed(seed)
    total = 0.0
    for i in range(0, n, 8):
        sl = slice(i, i + 8)
        total += float(flow_matching_loss(model, batch.videos[sl], batch.labels[sl], generator=g,
                                          label_dropout=0.0, t=t[sl])) * batch.videos[sl].shape[0]
    model.train(was_training)
    return total / n


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(resolve_device(args.device, hint="use --device cpu"))
    torch.manual_seed(args.seed)
    model = build_fidelity_model(num_layers=args.layers, ffn_dim=args.ffn_dim)
    with torch.no_grad():  # start as the zero-velocity predictor (DiT-style zero-init output layer)
        model.proj_out.weight.zero_()
        model.proj_out.bias.zero_()
    model.to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"fidelity model: WanTransformer3DModel {dict(model.config)}", flush=True)
    print(f"parameters: {n_params:,}; device {device}; threads {torch.get_num_threads()}; "
          f"steps {args.steps} x batch {args.batch_size}; lr {args.lr}", flush=True)

    ema = copy.deepcopy(model).eval() if args.ema > 0 else None
    if ema is not None:
        for p in ema.parameters():
            p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=args.weight_decay)
    g = torch.Generator(device="cpu").manual_seed(args.seed + 1)

    losses: list[float] = []
    t_start = time.perf_counter()
    steps_done = 0
    for step in range(args.steps):
        lr = lr_at(step, args, time.perf_counter() - t_start)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = generate_videos(args.batch_size, seed=args.seed * 1_000_003 + step, device=device)
        loss = flow_matching_loss(model, batch.videos, batch.labels, generator=g, label_dropout=args.label_dropout)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if ema is not None:
            decay = min(args.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - decay)
        loss_val = float(loss.detach())
        losses.append(loss_val)
        steps_done = step + 1
        elapsed = time.perf_counter() - t_start
        if steps_done % args.log_every == 0 or steps_done in (1, 10) or steps_done == args.steps:
            recent = sum(losses[-args.log_every:]) / len(losses[-args.log_every:])
            per = elapsed / steps_done
            print(f"step {steps_done:5d}/{args.steps}  loss {loss_val:.4f}  avg{args.log_every} {recent:.4f}  "
                  f"grad {float(grad_norm):.2f}  lr {lr:.2e}  {per:.2f}s/step  "
                  f"elapsed {elapsed / 60:.1f} min  eta {(args.steps - steps_done) * per / 60:.1f} min", flush=True)
        if args.save_every and steps_done % args.save_every == 0 and steps_done < args.steps:
            save_fidelity_weights(ema if ema is not None else model, args.out,
                                  {"checkpoint_step": str(steps_done)})
        if args.max_minutes and elapsed >= 60 * args.max_minutes:
            print(f"stopping early at step {steps_done}: --max-minutes {args.max_minutes} reached", flush=True)
            break
    train_s = time.perf_counter() - t_start
    model.eval()

    final_avg = sum(losses[-50:]) / len(losses[-50:])
    raw_eval = held_out_loss(model, device)
    chosen, chosen_name, chosen_eval = model, "raw", raw_eval
    if ema is not None:
        ema_eval = held_out_loss(ema, device)
        print(f"held-out loss: raw weights {raw_eval:.4f}, EMA weights {ema_eval:.4f}", flush=True)
        if ema_eval <= raw_eval:
            chosen, chosen_name, chosen_eval = ema, "ema", ema_eval
    else:
        print(f"held-out loss: {raw_eval:.4f}", flush=True)

    meta = {
        "steps": str(steps_done), "batch_size": str(args.batch_size), "lr": str(args.lr),
        "train_seconds": f"{train_s:.0f}", "device": str(device), "threads": str(torch.get_num_threads()),
        "final_train_loss_avg50": f"{final_avg:.5f}", "held_out_loss": f"{chosen_eval:.5f}",
        "weights": chosen_name, "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    try:
        import diffusers
        meta["diffusers"] = diffusers.__version__
    except ImportError:  # pragma: no cover
        pass
    save_fidelity_weights(chosen, args.out, meta)
    size_mb = args.out.stat().st_size / 2**20

    print(f"\ntraining: {steps_done} steps in {train_s / 60:.1f} min ({train_s / max(1, steps_done):.2f} s/step)")
    print(f"final loss: last step {losses[-1]:.4f}, mean of last 50 steps {final_avg:.4f}; "
          f"held-out loss ({chosen_name} weights) {chosen_eval:.4f}")
    print(f"weights: {args.out} ({size_mb:.1f} MB, {chosen_name})")

    rows = attention_locality(chosen, batch_size=4, t=0.5)
    print("\nself-attention concentration at t = 0.5 (timestep 500) on 4 generated videos; "
          "mass = mean fraction of a query's attention inside the region; uniform = the share "
          "uniform attention would give; spatial radius in tokens (1 token = 4 px), any frame:")
    print(format_locality(rows))

    # Samples: every shape, two directions each (8 videos), frames left to right.
    labels = [label_of(s, d) for s in range(4) for d in ((0, 2) if s % 2 == 0 else (1, 3))]
    t0 = time.perf_counter()
    videos = sample(chosen, labels, steps=args.sample_steps, seed=0, guidance_scale=args.guidance)
    png = args.out.with_name(args.out.stem + "_samples.png")
    save_strip(videos, str(png), scale=3)
    print(f"\nsamples ({args.sample_steps} Euler steps, guidance {args.guidance}, "
          f"{time.perf_counter() - t0:.1f}s): {png}")
    for i, lab in enumerate(labels):
        print(f"  row {i}: {label_name(lab)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
