"""``simia``: every stage of the experiment from the command line.

Each subcommand prints its summary as JSON on stdout, logs progress on stderr, and
exits 2 with a one-paragraph error (file, record, field) on bad input or settings.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from simia import __version__
from simia.datasets import DatasetDesign
from simia.errors import SimiaError
from simia.io import dumps


def _levels(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"levels must be comma-separated percentages like 0,5,10,20, got {text!r}"
        ) from None
    return tuple(int(v) if v.is_integer() else v for v in values)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simia", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"simia {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    pr = sub.add_parser("process", help="filter and convert raw conversations for SFT")
    pr.add_argument("raw", help="raw generated conversations (JSON list)")
    pr.add_argument("-o", "--out-dir", required=True,
                    help="writes processed.json, rejects.jsonl, summary.json here")
    pr.add_argument("--format", choices=["native", "hermes"], default="native",
                    help="native (default): function_call/observation roles + tools column; "
                         "hermes: the reference scripts' format")
    pr.add_argument("--tau2-data-dir", default=None,
                    help="folder with tau2's telecom policy files (default: $TAU2_DATA_DIR)")
    pr.add_argument("--domain", default="telecom")
    pr.add_argument("--skip-invalid-records", action="store_true",
                    help="reject malformed records (listed in rejects.jsonl) instead of failing")
    calls = pr.add_mutually_exclusive_group()
    calls.add_argument("--extract-embedded-calls", dest="extract", action="store_true",
                       default=None, help="turn FUNCTION_CALL: text in gpt turns into validated "
                                          "tool calls (default for native)")
    calls.add_argument("--no-extract-embedded-calls", dest="extract", action="store_false",
                       help="leave it as text, as the reference did (default for hermes)")
    pr.add_argument("--force", action="store_true", help="redo even if outputs are up to date")

    sc = sub.add_parser("score-rules", help="rule-based sycophancy scores")
    sc.add_argument("conversations", help="raw or native-processed conversations (JSON list)")
    sc.add_argument("-o", "--out", required=True, help="scores, one JSON line per conversation")
    sc.add_argument("--force", action="store_true")

    bd = sub.add_parser("build-datasets", help="SFT datasets at controlled sycophancy levels")
    bd.add_argument("--conversations", required=True, help="processed.json")
    bd.add_argument("--scores", required=True,
                    help="rule scores (simia score-rules) or LLM judge scores (JSONL)")
    bd.add_argument("-o", "--out-dir", required=True)
    d = DatasetDesign()
    bd.add_argument("--levels", type=_levels, default=d.levels,
                    help="sycophancy levels in %% (default 0,5,10,20)")
    bd.add_argument("--size", type=int, default=d.size, help="conversations per dataset")
    bd.add_argument("--shared-clean", type=int, default=d.shared_clean,
                    help="clean conversations shared by every level")
    bd.add_argument("--seed", type=int, default=d.seed)
    bd.add_argument("--threshold", type=float, default=d.threshold,
                    help="score above this = sycophantic (default 0)")
    bd.add_argument("--name-prefix", default=d.name_prefix)
    bd.add_argument("--force", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    from simia import stages  # after logging is set up; keeps --help fast

    try:
        if args.command == "process":
            result = stages.process_stage(
                args.raw, args.out_dir, fmt=args.format, tau2_data_dir=args.tau2_data_dir,
                domain=args.domain, skip_invalid_records=args.skip_invalid_records,
                extract_embedded_calls=args.extract, force=args.force)
        elif args.command == "score-rules":
            result = stages.score_rules_stage(args.conversations, args.out, force=args.force)
        else:
            design = DatasetDesign(levels=args.levels, size=args.size,
                                   shared_clean=args.shared_clean, seed=args.seed,
                                   threshold=args.threshold, name_prefix=args.name_prefix)
            result = stages.build_datasets_stage(args.conversations, args.scores, args.out_dir,
                                                 design, force=args.force)
    except SimiaError as exc:
        print(f"simia {args.command}: error: {exc}", file=sys.stderr)
        return 2
    result.pop("signature", None)
    sys.stdout.write(dumps(result, indent=True).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
