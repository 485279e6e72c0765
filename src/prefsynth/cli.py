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


class _NoUserErrorTraceback(logging.Filter):
    """Prefect logs a failed task or flow with its traceback; for a UserError the one-line message is the whole
    story, so drop the traceback (the record itself, with the message, still goes out)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from prefsynth.errors import UserError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, UserError):
            record.exc_info = None
            record.exc_text = None
            record.msg = f"{record.getMessage().splitlines()[0]} {exc}"
            record.args = ()
        return True


def hide_user_error_tracebacks() -> None:
    """Attach the filter to every handler that exists now (Prefect configures its handlers at import)."""
    loggers = [logging.getLogger()] + [logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict)
                                       if n.startswith("prefect")]
    for lg in loggers:
        for h in getattr(lg, "handlers", []):
            if not any(isinstance(f, _NoUserErrorTraceback) for f in h.filters):
                h.addFilter(_NoUserErrorTraceback())


def quiet_libraries() -> None:
    """vLLM, transformers and datasets log a lot at INFO; our own progress bars and summary say what matters."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("prefsynth").setLevel(logging.INFO)
    for name in ("httpx", "httpx2", "httpcore", "httpcore2", "urllib3", "filelock"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("vllm").setLevel(logging.ERROR)  # e.g. "Triton is installed, but doesn't include CPU backend"
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm\..*")
    if "prefect" in sys.modules:
        hide_user_error_tracebacks()


def _print_summary(summary) -> None:
    print("\n".join(summary.lines()), flush=True)


def load_flow(module: str, name: str):
    """A Prefect flow of flows/ (beside src/ in the checkout, where prefect.yaml's entrypoints point too)."""
    import importlib.util

    from prefsynth.constants import ROOT

    spec = importlib.util.spec_from_file_location(f"prefsynth_flow_{module}", ROOT / "flows" / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    hide_user_error_tracebacks()  # Prefect set up its log handlers on import
    return getattr(mod, name)


def cmd_build(args: argparse.Namespace) -> int:
    from prefsynth.config import parse_into, to_dict
    from prefsynth.errors import UserError
    from prefsynth.pipeline import PipelineConfig, run

    cfg = parse_into(PipelineConfig, args)
    if args.prefect:  # what `make paired` runs: the build-dataset flow, in this process
        load_flow("build_dataset", "build_dataset")(to_dict(cfg), train=args.train, shards=args.shards,
                                                    pool=args.pool)
        return 0
    if args.shards != 1 or args.train or args.pool:
        raise UserError("--shards, --pool and --train are options of the Prefect flow: add --prefect")
    summary = run(cfg)
    _print_summary(summary)
    if args.summary_json:
        from prefsynth.config import to_dict
        from prefsynth.fsutil import atomic_write_json

        atomic_write_json(Path(args.summary_json), to_dict(summary))
    return 0


def cmd_install_model(args: argparse.Namespace) -> int:
    from prefsynth.model import WRITER, ensure_bundled_model, resolve_model

    print(ensure_bundled_model())
    print(resolve_model(WRITER).path)  # the default generator: the bundled model + data/writer + data/writer_dpo
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from prefsynth.config import parse_into, to_dict
    from prefsynth.publish import PublishConfig, publish

    cfg = parse_into(PublishConfig, args)
    for result in publish(Path(args.out_dir), cfg):
        print(json.dumps(to_dict(result), sort_keys=True))
    return 0


def cmd_judge_eval(args: argparse.Namespace) -> int:
    """Accuracy of each polarity judge, with 95% intervals, on every evaluation set (prefsynth.judge_eval)."""
    from prefsynth import judge_eval
    from prefsynth.config import parse_into
    from prefsynth.engines import get_backend
    from prefsynth.generate import GenerateConfig
    from prefsynth.judge import JudgeConfig
    from prefsynth.model import resolve_model
    from prefsynth.polarity_head import HEAD_FILE, PolarityHead
    from prefsynth.prompts import PromptConfig, Templates

    cfg = parse_into(JudgeConfig, args)
    gen = GenerateConfig(model=cfg.model or "bundled", backend=args.backend if args.backend != "none" else "auto")
    model = resolve_model(gen.model)
    templates = Templates(PromptConfig())
    backend = get_backend(model, gen) if args.backend != "none" else None
    if args.train:
        head = judge_eval.train_head(backend, templates, cfg, model.fingerprint)
        head.save()
        print(f"head trained on {head.trained['set']} (n={head.trained['n']}), l2={head.trained['l2']}, "
              f"5-fold accuracy there {head.trained['cv_accuracy'][str(head.trained['l2'])]:.3f}; "
              f"saved to {HEAD_FILE.relative_to(HEAD_FILE.parents[2])}")
    head = PolarityHead.load()
    if head is not None and not head.fits(model.fingerprint, templates.hash_for("judge")):
        print("the trained head does not fit this model or judge template: it is left out (--train fits one)")
        head = None
    sets = dict(judge_eval.EVAL_SETS)
    for spec in args.set or []:
        name, _, path = spec.partition("=")
        sets[name] = Path(path)
    report = judge_eval.evaluate(backend, templates, cfg, head, sets)
    print(f"polarity judge accuracy [95% interval], model {gen.model}; a score of exactly 0.5 counts as half right")
    for line in judge_eval.table(report, "real-dev" if head is not None else None):
        print(line)
    if args.write and backend is not None:
        judge_eval.write_measured(report, head, model.fingerprint, templates.hash_for("judge"))
        print(f"written to {judge_eval.MEASURED.relative_to(judge_eval.MEASURED.parents[2])}")
    if args.json:
        print(json.dumps(report, sort_keys=True))
    return 0


def cmd_validity_eval(args: argparse.Namespace) -> int:
    """Precision and recall of the validity rules on hand-labelled generated reviews (prefsynth.validity_eval)."""
    from prefsynth import validity_eval
    from prefsynth.prompts import PromptConfig, Templates
    from prefsynth.validity_scorer import SCORER_FILE

    if args.train:
        scorer, lines = validity_eval.train_scorer()
        print("\n".join(lines))
        scorer.save()
        print(f"validity scorer {scorer.fingerprint} written to data/judge/{SCORER_FILE.name}")
    if args.familiar:
        from prefsynth import familiar

        print("\n".join(validity_eval.familiar_check()))
        data = familiar.write(validity_eval.load_labels().iter_rows(named=True),
                              [p.name for p in validity_eval.ALL_LABELS])
        print(f"familiar words: {len(data['papers'])} counted, those in accepted reviews of >= {data['min_titles']} "
              f"papers are familiar; written to data/judge/{familiar.FAMILIAR_FILE.name}")
    paths = [Path(p) for p in args.labels.split(",") if p.strip()] if args.labels else []
    report = validity_eval.evaluate(validity_eval.load_labels(*paths), Templates(PromptConfig()), args.max_p_invalid)
    for line in validity_eval.lines(report):
        print(line)
    if args.write:
        validity_eval.write(report)
    return 0


def cmd_engine(args: argparse.Namespace) -> int:
    """Replace this process with a vLLM OpenAI-compatible server holding the model, for builds run with --engine:
    they then skip importing torch and vLLM and starting an engine (~10 s of every run on two cores)."""
    from prefsynth.config import parse_into
    from prefsynth.engines import engine_command, vllm_available
    from prefsynth.generate import GenerateConfig
    from prefsynth.errors import UserError
    from prefsynth.model import resolve_model

    if not vllm_available():
        raise UserError("`prefsynth engine` runs vLLM, which is not installed (run `make install`)")
    cfg = parse_into(GenerateConfig, args)
    model = resolve_model(cfg.model)
    argv, env = engine_command(model, cfg, args.host, args.port)
    print(f"engine: serving {argv[argv.index('--served-model-name') + 1]} on http://{args.host}:{args.port} "
          f"(builds: --engine http://{args.host}:{args.port})", flush=True)
    for k, v in env.items():  # as in-process: a variable the user set wins
        os.environ.setdefault(k, v)
    os.environ.pop("VLLM_LOGGING_LEVEL", None)  # the server's own log is what its log file is for
    os.execv(argv[0], argv)
    return 0  # not reached


def cmd_train(args: argparse.Namespace) -> int:
    from prefsynth.config import parse_into, to_dict
    from prefsynth.train import TrainConfig, train

    cfg = parse_into(TrainConfig, args)
    if args.prefect:  # what `make train-dpo` runs: the train flow, in this process
        cfg.validate()  # a bad flag fails in one line before Prefect starts its engine
        load_flow("train", "train")(to_dict(cfg))
        return 0
    for line in train(cfg).lines():
        print(line, flush=True)
    return 0


def cmd_train_writer(args: argparse.Namespace) -> int:
    from prefsynth.config import parse_into
    from prefsynth.train.writer import fit_writer
    from prefsynth.train.writer_config import WriterConfig

    fit_writer(parse_into(WriterConfig, args))
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    """A page on 127.0.0.1 to read a dataset (prefsynth.view): prints the URL, serves until Ctrl-C."""
    from prefsynth.view import serve

    return serve(args.path, port=args.port, open_browser=not args.no_browser)


class Parser(argparse.ArgumentParser):
    """argparse prints usage plus an error over several lines; a user gets one line and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


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

    parser = Parser(prog="prefsynth", description="Synthetic DPO/KTO preference datasets.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = _stage_parser(sub, "build", "collect titles, generate reviews, judge, build and write the datasets",
                      PipelineConfig, cmd_build)
    p.add_argument("--summary-json", default=None, help="also write the run summary (stats, timings) to this file")
    p.add_argument("--prefect", action="store_true", help="run it as the build-dataset Prefect flow in this process "
                   "(each stage a task run; what `make paired` does)")
    p.add_argument("--shards", type=int, default=1, help="with --prefect: generate in this many parts")
    p.add_argument("--pool", default=None, help="with --prefect and --shards N: run the parts as generate-shard/<pool> "
                   "runs on that pool's workers (needs `make serve`, PREFECT_API_URL and --generate.store)")
    p.add_argument("--train", action="store_true", help="with --prefect: start train/dpo or train/kto on the "
                   "result (needs `make serve` and PREFECT_API_URL)")
    _stage_parser(sub, "install-model", "convert the bundled SmolLM2 model and merge the writer once (make install "
                  "does this)",
                  None, cmd_install_model)
    p = _stage_parser(sub, "publish", "upload a dataset folder to the Hugging Face Hub in one commit",
                      PublishConfig, cmd_publish)
    p.add_argument("--out", dest="out_dir", required=True, help="dataset folder written by `prefsynth build`")
    p = _stage_parser(sub, "judge-eval", "accuracy of each polarity judge, with 95%% intervals, on real reviews "
                      "(dev and test parts), short written reviews and hand-labelled generated ones",
                      None, cmd_judge_eval)
    p.add_argument("--backend", default="auto", choices=["transformers", "vllm", "auto", "none"],
                   help="none: lexicon only")
    p.add_argument("--set", action="append", metavar="NAME=PATH",
                   help="another jsonl of {review, label} to report on (repeatable)")
    p.add_argument("--train", action="store_true", help="first train the polarity head on the real-review dev part")
    p.add_argument("--write", type=lambda v: v.lower() in ("1", "true", "yes"), default=True, metavar="BOOL",
                   help="write the figures to data/judge/measured.json, which builds quote (default: true)")
    p.add_argument("--json", action="store_true", help="also print the full report as JSON")
    from prefsynth.config import add_arguments
    from prefsynth.judge import JudgeConfig

    add_arguments(p, JudgeConfig)
    p = _stage_parser(sub, "validity-eval", "precision and recall of the validity rules on hand-labelled "
                      "generated reviews", None, cmd_validity_eval)
    p.add_argument("--labels", default=None, help="comma-separated jsonl files of labelled reviews (default: "
                   "every label file of tests/data)")
    p.add_argument("--max-p-invalid", type=float, default=None, help="also measure the rules with the validity "
                   "scorer at this threshold, on the label files it was not fitted on (default: the build's)")
    p.add_argument("--train", action="store_true", help="first fit the validity scorer on the label files read before "
                   "its test (data/judge/validity_scorer.json.gz)")
    p.add_argument("--familiar", action="store_true", help="first count the familiar words of the accepted reviews "
                   "(data/judge/familiar_words.json), after measuring them on seeds 20-22 with the words counted "
                   "from the label files read before those")
    p.add_argument("--write", type=lambda v: v.lower() in ("1", "true", "yes"), default=True, metavar="BOOL",
                   help="write the figures to data/judge/validity.json, which builds quote (default: true)")
    from prefsynth.generate import GenerateConfig

    p = _stage_parser(sub, "engine", "run a vLLM server holding the model; builds use it with --engine URL",
                      GenerateConfig, cmd_engine)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for other machines)")
    p.add_argument("--port", type=int, default=8765, help="port to listen on")
    from prefsynth.train import TrainConfig

    p = _stage_parser(sub, "train", "train a LoRA adapter with TRL (DPO on paired, KTO on unpaired) and evaluate it",
                      TrainConfig, cmd_train)
    p.add_argument("--prefect", action="store_true", help="run it as the train Prefect flow in this process "
                   "(what `make train-dpo` does)")
    from prefsynth.train.writer_config import WriterConfig

    _stage_parser(sub, "train-writer", "fine-tune the writer adapter (data/writer) on the generated reviews that were "
                  "read and accepted (tests/data), or with --method dpo its polish (data/writer_dpo) on accepted over "
                  "rejected ones; builds generate with both as --model writer", WriterConfig, cmd_train_writer)
    p = _stage_parser(sub, "view", "browse a dataset in a local web page: pairs side by side, kept and dropped rows, "
                      "filters, search", None, cmd_view)
    p.add_argument("path", help="dataset folder written by `prefsynth build`, or a Hub dataset repo namespace/name")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: any free port)")
    p.add_argument("--no-browser", action="store_true", help="only print the URL; do not open a browser")
    return parser


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
    except BrokenPipeError:  # `prefsynth ... | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    if "--prefect" in (sys.argv[1:] if argv is None else argv):
        # Prefect installs its own log handlers (run names, its format) when its flow API loads, unless the root
        # logger is already set up: load it before quiet_libraries() configures ours. (`import prefect` alone is
        # lazy and sets up nothing.)
        from prefect import flow  # noqa: F401
    quiet_libraries()

    def go() -> int:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:
            return int(e.code or 0)
        try:
            return args.fn(args)
        finally:  # engines a command loaded (build, judge-eval), however it ended
            if "prefsynth.engines" in sys.modules:
                sys.modules["prefsynth.engines"].close_backends(process_exit=_PROCESS_ENTRY)

    return run_cli(go)


_PROCESS_ENTRY = False  # set by entry(): this process ends when the command returns


def entry() -> None:
    """The `prefsynth` command. Once the command has returned, every output is renamed into place and every
    journal closed; what is left is the interpreter freeing torch's and vLLM's objects one by one (~2 s on two
    cores), which we skip. Not for in-process callers: use main(). A run that went through Prefect exits normally:
    Prefect stops its temporary API server in an atexit hook, which os._exit would skip (leaving it running)."""
    global _PROCESS_ENTRY
    _PROCESS_ENTRY = True
    rc = main()
    if "prefect" in sys.modules:
        sys.exit(rc)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    entry()
