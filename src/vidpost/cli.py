"""The `vidpost` command. Each subcommand parses its arguments and calls one library function.

Errors the user can cause (a bad config key, a missing file, an unparsable caption) are printed as one
line, with no traceback, and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from vidpost.errors import VidpostError


def _world_overrides(args: argparse.Namespace, style: str | None = None) -> list[str]:
    flags = {"n": args.n, "seed": args.seed, "split": args.split, "style": style}
    return [*args.overrides, *(f"{k}={v}" for k, v in flags.items() if v is not None)]


def cmd_world_make(args: argparse.Namespace) -> None:
    from vidpost.config import load_config
    from vidpost.world.config import DatasetConfig
    from vidpost.world.dataset import make_dataset

    cfg = load_config(DatasetConfig, args.config, _world_overrides(args, args.style))
    out = make_dataset(args.out, cfg, overwrite=args.overwrite)
    print(f"wrote {cfg.n} {cfg.style} clips ({cfg.split} split) to {out}")


def cmd_world_prompts(args: argparse.Namespace) -> None:
    from vidpost.config import load_config
    from vidpost.world.config import DatasetConfig
    from vidpost.world.dataset import prompt_record

    cfg = load_config(DatasetConfig, args.config, _world_overrides(args))
    for index in range(cfg.n):
        record = prompt_record(cfg, index)
        if args.jsonl:
            print(json.dumps({k: record[k] for k in ("terse", "intent", "canonical")}))
        else:
            print(record["terse"] if args.terse else record["canonical"])


def cmd_score(args: argparse.Namespace) -> None:
    from vidpost.evaluation import DEFAULT_REWARDS, format_table, score_folder

    rewards = args.rewards.split(",") if args.rewards else DEFAULT_REWARDS
    scores = [score_folder(d, args.caption_key, rewards) for d in args.dirs]
    print(format_table(scores))
    if not any(s.n for s in scores):
        raise VidpostError(f"no clip was scored in {', '.join(args.dirs)} (see the warnings above)")
    if args.json:
        payload = scores[0].to_json() if len(scores) == 1 else {"folders": [s.to_json() for s in scores]}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}")


# command -> (its config's module and class, an example config): `vidpost config COMMAND` documents the class
CONFIGS = {
    "pretrain": ("vidpost.recipes.sft", "SFTConfig", "configs/shapeworld/pretrain.yaml"),
    "sft": ("vidpost.recipes.sft", "SFTConfig", "configs/shapeworld/sft.yaml"),
    "grpo": ("vidpost.recipes.grpo", "GRPOConfig", "configs/shapeworld/grpo_flash.yaml"),
    "distill": ("vidpost.recipes.distill", "DistillConfig", "configs/shapeworld/distill.yaml"),
    "enhance": ("vidpost.recipes.enhance", "EnhanceConfig", "configs/shapeworld/enhance.yaml"),
    "run": ("vidpost.pipeline.config", "PipelineConfig", "configs/shapeworld/pipeline.yaml"),
    "world": ("vidpost.world.config", "DatasetConfig", "configs/shapeworld/world.yaml"),
    "acceleration": ("vidpost.inference.acceleration", "AccelerationConfig", "configs/shapeworld/acceleration.yaml"),
}


def _config_epilog(command: str) -> str:
    return (
        f"example config: {CONFIGS[command][2]}; every key with its type, default and meaning: vidpost config {command}"
    )


def cmd_config(args: argparse.Namespace) -> None:
    import importlib

    from vidpost.config import describe_config

    module, name, example = CONFIGS[args.recipe]
    print(f"# {args.recipe}: every config key as `key: type = default  # meaning` (example: {example})")
    print(describe_config(getattr(importlib.import_module(module), name)))


def cmd_rewards(args: argparse.Namespace) -> None:
    from vidpost.rewards.registry import REWARDS

    for name, family in REWARDS.items():
        print(f"{name:<20} {family}")


def cmd_reward_serve(args: argparse.Namespace) -> None:
    from vidpost.rewards.remote import serve

    serve(
        args.host,
        args.port,
        args.rewards.split(",") if args.rewards else None,
        args.max_request_mb,
        _server_token(args),
    )


def _train(args: argparse.Namespace, recipe, schema) -> None:
    from vidpost import dist
    from vidpost.config import load_config

    dist.init_from_env()  # under torchrun: join its process group (FSDP2); else one process
    main = dist.is_main()
    with dist.leave_at_end():
        final = recipe(load_config(schema, args.config, args.overrides), args.out)
    if final is None:
        raise SystemExit(130)
    if main:
        print(f"final model: {final}")


def cmd_sft(args: argparse.Namespace) -> None:
    from vidpost.recipes.sft import SFTConfig, train

    _train(args, train, SFTConfig)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from vidpost.recipes.sft import SFTConfig, pretrain

    _train(args, pretrain, SFTConfig)


def cmd_grpo(args: argparse.Namespace) -> None:
    from vidpost.recipes.grpo import GRPOConfig, train

    _train(args, train, GRPOConfig)


def cmd_distill(args: argparse.Namespace) -> None:
    from vidpost.recipes.distill import DistillConfig, train

    _train(args, train, DistillConfig)


def cmd_run(args: argparse.Namespace) -> None:
    from vidpost.config import load_config
    from vidpost.pipeline.config import PipelineConfig
    from vidpost.pipeline.run import add_stage_overrides, run_pipeline, with_stage_overrides

    own, per_stage = with_stage_overrides(args.overrides)  # stages.distill.train.steps_per_round=2 goes to distill
    cfg = add_stage_overrides(load_config(PipelineConfig, args.config, own), per_stage)
    if run_pipeline(cfg, args.out, pipeline_file=args.config) is None:
        raise SystemExit(130)
    print(f"report: {Path(args.out) / 'report.html'}")


def cmd_report(args: argparse.Namespace) -> None:
    from vidpost.pipeline.report import write_report

    print(f"report: {write_report(args.run)}")


def _acceleration(args: argparse.Namespace):
    """--acceleration FILE, or --cache, --cache-threshold, --compile, --attention-backend, as an AccelerationConfig.

    The flags cover the common cases (mag then calibrates itself); the file sets every key of the cache, e.g.
    MagCache's calibrated ratios, as the recipes' `validation.acceleration` does.
    """
    from pydantic import ValidationError

    from vidpost.config import load_config
    from vidpost.inference.acceleration import AccelerationConfig

    if args.acceleration is not None:
        flags = {
            "--cache": args.cache != "none",
            "--cache-threshold": args.cache_threshold is not None,
            "--compile": args.compile,
            "--attention-backend": args.attention_backend is not None,
        }
        if any(flags.values()):
            given = ", ".join(flag for flag, set_ in flags.items() if set_)
            raise VidpostError(
                f"--acceleration {args.acceleration} sets the cache, compile and attention backend; drop {given}"
            )
        return load_config(AccelerationConfig, args.acceleration)
    cache = None
    if args.cache != "none":
        cache = {
            "name": args.cache,
            "threshold": args.cache_threshold,
            "calibrate": True if args.cache == "mag" else None,
        }
    elif args.cache_threshold is not None:
        raise VidpostError("--cache-threshold needs --cache first_block or mag")
    try:
        return AccelerationConfig(cache=cache, compile=args.compile, attention_backend=args.attention_backend)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-")
        message = " ".join(first["msg"].removeprefix("Value error, ").split())
        where = f"--cache {args.cache}" if flag == "--cache" else flag
        raise VidpostError(f"{where}: {message}") from exc


def cmd_sample(args: argparse.Namespace) -> None:
    from vidpost.sample import sample_to_folder

    flags = {"steps": args.steps, "guidance": args.guidance, "shift": args.shift}
    report = sample_to_folder(
        args.model,
        args.prompts,
        args.out,
        seed=args.seed,
        sampling_overrides={k: v for k, v in flags.items() if v is not None},
        batch_size=args.batch_size,
        precision=args.precision,
        fmt=args.format,
        overwrite=args.overwrite,
        acceleration=_acceleration(args),
        enhancer=args.enhancer,
    )
    print(
        f"wrote {report['videos']} videos to {args.out} ({report['nfe_per_video']} forward passes and "
        f"{report['seconds_per_video']:.2f} s per video)"
    )
    if args.enhancer:
        print(f"enhancer {args.enhancer}: {report['enhancer']['summary']}")


def cmd_enhance_train(args: argparse.Namespace) -> None:
    from vidpost.recipes.enhance import EnhanceConfig, train

    _train(args, train, EnhanceConfig)


def cmd_enhance_apply(args: argparse.Namespace) -> None:
    from vidpost.enhance.resolve import load_enhancer

    enhancer = load_enhancer(args.enhancer, args.overrides)
    lines = [" ".join(line.split()) for line in sys.stdin.read().splitlines()]
    prompts = [line for line in lines if line]
    rewrites = iter(enhancer.rewrite(prompts))
    for line in lines:  # an empty line stays empty, so output line i is the rewrite of input line i
        print(next(rewrites) if line else "")
    counts = enhancer.counts
    logging.getLogger("vidpost").info("enhancer %s: %s", args.enhancer, counts.summary())
    if counts.prompts and not counts.rewritten:  # printed what it could (the prompts), but nothing was enhanced
        raise VidpostError(f"enhancer {args.enhancer}: no prompt was rewritten ({counts.summary()})")


def cmd_enhance_serve(args: argparse.Namespace) -> None:
    from vidpost.enhance.resolve import load_enhancer
    from vidpost.enhance.server import serve

    serve(
        load_enhancer(args.enhancer, args.overrides),
        args.host,
        args.port,
        max_request_mb=args.max_request_mb,
        token=_server_token(args),
    )


def _server_token(args: argparse.Namespace) -> str | None:
    """The bearer token a server requires (from --token-env's variable), refusing other hosts without one."""
    from vidpost.jsonhttp import server_token

    token = server_token(args.token_env)
    if token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("vidpost").warning(
            "serving on %s without a token: anyone who reaches it can use it (set $%s to require one)",
            args.host,
            args.token_env,
        )
    return token


def _add_server_args(parser: argparse.ArgumentParser, max_mb: float) -> None:
    parser.add_argument(
        "--max-request-mb",
        type=float,
        default=max_mb,
        help=f"larger requests are refused with 413 (default {max_mb:g})",
    )
    parser.add_argument(
        "--token-env",
        default="VIDPOST_SERVER_TOKEN",
        help="environment variable holding a bearer token every request must carry (unset: none)",
    )


def _add_recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument("--out", required=True, help="run directory (rerun the same command to resume)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=100")


def _add_world_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (default: built-in defaults, see configs/shapeworld/world.yaml)")
    parser.add_argument("--n", type=int, help="number of clips or prompts")
    parser.add_argument("--seed", type=int, help="item i is a pure function of (seed, split, i)")
    parser.add_argument("--split", choices=["train", "eval", "heldout"], help="prompt split")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. world.frames=16")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidpost", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    world = commands.add_parser("world", help="ShapeWorld: a procedural text-to-video world with exact rewards")
    world_commands = world.add_subparsers(dest="world_command", required=True)
    make = world_commands.add_parser("make", help="write a ShapeWorld dataset folder")
    make.add_argument("--out", required=True, help="dataset folder to write")
    make.add_argument("--style", choices=["curated", "web"], help="curated (clean) or web (scraped-like)")
    make.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    _add_world_args(make)
    make.set_defaults(func=cmd_world_make)
    prompts = world_commands.add_parser("prompts", help="print prompts, one per line")
    prompts.add_argument("--terse", action="store_true", help="terse user prompts instead of canonical captions")
    prompts.add_argument("--jsonl", action="store_true", help="one JSON object per line: terse, intent, canonical")
    _add_world_args(prompts)
    prompts.set_defaults(func=cmd_world_prompts)

    score = commands.add_parser("score", help="score every clip of dataset folders against their captions")
    score.add_argument("dirs", nargs="+", metavar="DIR", help="dataset folder(s) with metadata.jsonl")
    score.add_argument("--json", help="write the scores (means, success_rate, per clip, skipped) to this file")
    score.add_argument("--caption-key", default="caption", help="metadata field to score against")
    score.add_argument("--rewards", help="comma-separated reward names (see `vidpost rewards`)")
    score.set_defaults(func=cmd_score)

    for name, func, text in (
        ("pretrain", cmd_pretrain, "train a video diffusion model from scratch (flow matching)"),
        ("sft", cmd_sft, "fine-tune a video diffusion model on a captioned dataset (flow matching)"),
        ("grpo", cmd_grpo, "reinforce a video diffusion model on rewards (Flash-GRPO, or full / window GRPO)"),
        (
            "distill",
            cmd_distill,
            "distil a model into a few-step, one-pass-per-step student (CFG and step distillation)",
        ),
    ):
        recipe = commands.add_parser(name, help=text, epilog=_config_epilog(name))
        _add_recipe_args(recipe)
        recipe.set_defaults(func=func)

    run = commands.add_parser(
        "run",
        help="the post-training stages in order (SFT, GRPO, ...) in one run directory",
        epilog=_config_epilog("run"),
    )
    _add_recipe_args(run)
    run.set_defaults(func=cmd_run)
    report = commands.add_parser("report", help="write RUN/report.html (self-contained) for a `vidpost run` directory")
    report.add_argument("run", metavar="RUN", help="the run directory")
    report.set_defaults(func=cmd_report)

    sample = commands.add_parser("sample", help="generate one video per prompt into a dataset folder")
    sample.add_argument(
        "--model", required=True, help="model directory, run directory, or shapeworld-base / shapeworld-sft"
    )
    sample.add_argument("--prompts", required=True, help="text file, one prompt per line ('-' reads stdin)")
    sample.add_argument("--out", required=True, help="dataset folder to write (metadata.jsonl, clips/, sample.json)")
    sample.add_argument("--steps", type=int, help="denoising steps (default: the model's recommendation)")
    sample.add_argument("--guidance", type=float, help="classifier-free guidance scale, 1 = off (default: the model's)")
    sample.add_argument("--shift", type=float, help="timestep shift (default: the model's)")
    sample.add_argument("--seed", type=int, default=0, help="video j starts from noise seeded seed + j")
    sample.add_argument("--batch-size", type=int, default=16, help="videos per batch")
    # precision.PRECISIONS, spelled out: importing it would import torch before --help
    sample.add_argument(
        "--precision",
        choices=["auto", "float32", "bf16"],
        default="float32",
        help="float32, bf16 autocast, or auto (bf16 where the hardware has it natively)",
    )
    sample.add_argument(
        "--format", choices=["npy", "gif", "mp4"], default="npy", help="clip file format (npy is lossless)"
    )
    sample.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    sample.add_argument(
        "--cache",
        choices=["none", "first_block", "mag", "taylorseer", "pab"],
        default="none",
        help="feature cache that reuses work across steps (mag calibrates on one extra video)",
    )
    sample.add_argument("--cache-threshold", type=float, help="first_block (default 0.05) or mag (0.06) threshold")
    sample.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks")
    sample.add_argument("--attention-backend", metavar="NAME", help="diffusers attention backend, e.g. flash, sage")
    sample.add_argument(
        "--acceleration",
        metavar="FILE",
        help="YAML with cache:, compile: and attention_backend: "
        "(every cache key, e.g. configs/shapeworld/acceleration.yaml), instead of the four flags above",
    )
    sample.add_argument(
        "--enhancer",
        metavar="NAME_OR_DIR",
        help="rewrite each prompt first (see `vidpost enhance`); "
        "metadata keeps the prompt as caption and the rewrite as prompt_used",
    )
    sample.set_defaults(func=cmd_sample)

    enhance = commands.add_parser("enhance", help="prompt enhancement: train, apply or serve a prompt rewriter")
    enhance_commands = enhance.add_subparsers(dest="enhance_command", required=True)
    enhance_train = enhance_commands.add_parser(
        "train",
        help="train an enhancer, the toy or a local chat LM (SFT, then GRPO on video rewards)",
        epilog=_config_epilog("enhance"),
    )
    _add_recipe_args(enhance_train)
    enhance_train.set_defaults(func=cmd_enhance_train)
    enhancer_help = (
        "shapeworld-enhancer, a toy or transformers model directory, an enhance run, "
        "an enhancer YAML config or an http(s):// OpenAI-compatible endpoint"
    )
    enhance_apply = enhance_commands.add_parser("apply", help="rewrite the prompts on stdin, one per line, in order")
    enhance_apply.add_argument("--enhancer", required=True, metavar="NAME_OR_DIR", help=enhancer_help)
    enhance_apply.add_argument("overrides", nargs="*", metavar="key=value", help="enhancer config overrides")
    enhance_apply.set_defaults(func=cmd_enhance_apply)
    enhance_serve = enhance_commands.add_parser("serve", help="serve an enhancer as an OpenAI-compatible chat endpoint")
    enhance_serve.add_argument("--enhancer", required=True, metavar="NAME_OR_DIR", help=enhancer_help)
    enhance_serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    enhance_serve.add_argument("--port", type=int, default=8011, help="port to listen on (0: any free port)")
    _add_server_args(enhance_serve, max_mb=1.0)
    enhance_serve.add_argument("overrides", nargs="*", metavar="key=value", help="enhancer config overrides")
    enhance_serve.set_defaults(func=cmd_enhance_serve)

    config = commands.add_parser(
        "config", help="print every key of a command's config: dotted name, type, default and meaning"
    )
    config.add_argument("recipe", choices=list(CONFIGS), help="the command whose config to describe")
    config.set_defaults(func=cmd_config)

    rewards = commands.add_parser("rewards", help="list the registered rewards")
    rewards.set_defaults(func=cmd_rewards)

    reward = commands.add_parser("reward", help="serve rewards to other processes (see docs/reward_protocol.md)")
    reward_commands = reward.add_subparsers(dest="reward_command", required=True)
    reward_serve = reward_commands.add_parser("serve", help="serve the registered rewards over HTTP until Ctrl-C")
    reward_serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    reward_serve.add_argument("--port", type=int, default=8765, help="port to listen on")
    reward_serve.add_argument("--rewards", help="comma-separated reward names to serve (default: all registered)")
    _add_server_args(reward_serve, max_mb=256.0)
    reward_serve.set_defaults(func=cmd_reward_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.INFO)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse ends a positional list at the first option, so `CONFIG --out D k=v` leaves k=v over
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray or (extra and "overrides" not in args):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        args.func(args)
    except VidpostError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
