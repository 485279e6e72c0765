"""`prefsynth <command>`: the typed configs of each stage, as flags.

A user-caused problem (UserError) prints one line and exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def quiet_libraries() -> None:
    """vLLM, transformers and datasets log a lot at INFO; our own progress bars and summary say what matters."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("httpx", "httpx2", "httpcore", "httpcore2", "urllib3", "filelock"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _print_summary(summary) -> None:
    print("\n".join(summary.lines()), flush=True)


def cmd_build(args: argparse.Namespace) -> int:
    from prefsynth.config import parse_into
    from prefsynth.generate import close_backends
    from prefsynth.pipeline import PipelineConfig, run

    cfg = parse_into(PipelineConfig, args)
    try:
        summary = run(cfg)
    finally:
        close_backends()
    _print_summary(summary)
    return 0


def cmd_install_model(args: argparse.Namespace) -> int:
    from prefsynth.model import ensure_bundled_model

    print(ensure_bundled_model())
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from prefsynth.config import parse_into, to_dict
    from prefsynth.publish import PublishConfig, publish

    cfg = parse_into(PublishConfig, args)
    for result in publish(Path(args.out_dir), cfg):
        print(json.dumps(to_dict(result), sort_keys=True))
    return 0


def _stage_parser(sub, name: str, help: str, cls: type | None, fn: Callable[[argparse.Namespace], int]):
    from prefsynth.config import add_arguments

    p = sub.add_parser(name, help=help, description=help)
    if cls is not None:
        add_arguments(p, cls)
    p.set_defaults(fn=fn)
    return p


def build_parser() -> argparse.ArgumentParser:
    from prefsynth.pipeline import PipelineConfig
    from prefsynth.publish import PublishConfig

    parser = argparse.ArgumentParser(prog="prefsynth", description="Synthetic DPO/KTO preference datasets.")
    sub = parser.add_subparsers(dest="command", required=True)
    _stage_parser(sub, "build", "collect titles, generate reviews, judge, build and write the datasets",
                  PipelineConfig, cmd_build)
    _stage_parser(sub, "install-model", "convert the bundled SmolLM2 model once (make install does this)",
                  None, cmd_install_model)
    p = _stage_parser(sub, "publish", "upload a dataset folder to the Hugging Face Hub in one commit",
                      PublishConfig, cmd_publish)
    p.add_argument("--out", dest="out_dir", required=True, help="dataset folder written by `prefsynth build`")
    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return parser


# Later stages (train, judge-eval) register themselves here to keep this module free of their imports.
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def run_cli(fn: Callable[[], int]) -> int:
    """Run `fn`, turning user errors into one line on stderr and exit code 2."""
    from prefsynth.errors import UserError

    try:
        return fn()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    quiet_libraries()

    def go() -> int:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:
            return int(e.code or 0)
        from prefsynth.errors import UserError

        try:
            return args.fn(args)
        except ValueError as e:  # config values that do not parse (wrong type, bad choice)
            if "field" in str(e) or "must be" in str(e):
                raise UserError(str(e)) from None
            raise

    return run_cli(go)


if __name__ == "__main__":
    sys.exit(main())
