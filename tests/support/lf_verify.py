"""Verify SFT datasets through LLaMA-Factory's own data pipeline: no row dropped or broken.

LLaMA-Factory's ShareGPT converter turns a malformed conversation (e.g. two consecutive
turns with the same role) into an empty example with a warning
(``Invalid role tag ... Skipping this abnormal example.``), and the SFT preprocessor then
drops it silently, so a training set can shrink unnoticed. This module loads every
dataset registered in ``dataset_info.json`` exactly as ``llamafactory-cli train`` does
(argument parser, tokenizer loader, template, ``get_dataset`` with stage ``sft``) and
compares the row count before and after. It also replays LLaMA-Factory's converter and
supervised preprocessor row by row, to name each broken row and the warnings it caused,
and flags rows whose labels are entirely ignored (nothing to learn).

Must run in the LLaMA-Factory venv (``scripts/make_lf_env.sh``)::

    HF_HUB_OFFLINE=1 PYTHONPATH=include:tests .venv-lf/bin/python -m support.lf_verify \\
        --dataset-dir DIR --tokenizer TOKENIZER_DIR [--json-out report.json]

Exit status: 0 when every row of every dataset survives, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["LFVerificationError", "main", "verify_datasets"]

_MAX_MESSAGE_CHARS = 300  # LLaMA-Factory warnings embed whole conversations
_MAX_WARNINGS = 50  # per dataset, in the report


class LFVerificationError(RuntimeError):
    """Raised by ``verify_datasets(..., raise_on_error=True)``; ``report`` holds the details."""

    def __init__(self, report: dict[str, Any]) -> None:
        self.report = report
        super().__init__(
            "LLaMA-Factory dataset verification failed:\n" + "\n".join(report["problems"])
        )


class _Capture(logging.Handler):
    """Collects LLaMA-Factory warning messages."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(_shorten(record.getMessage()))


@contextlib.contextmanager
def _captured_warnings() -> Iterator[list[str]]:
    """Yield a list that fills with warnings logged under the ``llamafactory`` logger."""
    handler = _Capture()
    logger = logging.getLogger("llamafactory")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


class _RowBroken(Exception):
    """A row that LLaMA-Factory emptied or dropped (no exception of its own)."""


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[:_MAX_MESSAGE_CHARS] + "..."


def _error(exc: BaseException) -> str:
    return _shorten(str(exc) if isinstance(exc, _RowBroken) else f"{type(exc).__name__}: {exc}")


def _data_files(dataset_dir: Path, file_name: str) -> list[Path]:
    """The files LLaMA-Factory reads for a ``file_name`` entry (a file or a folder)."""
    path = dataset_dir / file_name
    if path.is_dir():
        return [path / name for name in os.listdir(path)]  # LLaMA-Factory's order
    return [path]


def _count_rows(files: list[Path]) -> int:
    """Count the rows in JSON (array) / JSON-lines files, independently of LLaMA-Factory."""
    total = 0
    for path in files:
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:  # JSON lines
            total += sum(1 for line in text.splitlines() if line.strip())
            continue
        total += len(data) if isinstance(data, list) else 1
    return total


def _new_report(name: str) -> dict[str, Any]:
    return {
        "dataset": name,
        "files": [],
        "rows_in_file": None,
        "rows_after_conversion": None,
        "rows_after_pipeline": None,
        "broken_rows": [],
        "all_labels_ignored_rows": [],
        "truncated_rows": [],
        "pipeline_error": None,
        "warnings": [],
        "ok": False,
    }


def _train_args(
    name: str, dataset_dir: Path, tokenizer_dir: Path, template: str, cutoff_len: int, work: Path
) -> tuple[Any, Any, Any]:
    """Parse arguments with LLaMA-Factory's own parser, as ``llamafactory-cli train`` does."""
    from llamafactory.hparams import get_train_args

    model_args, data_args, training_args, _, _ = get_train_args(
        {
            "model_name_or_path": str(tokenizer_dir),
            "stage": "sft",
            "do_train": True,
            "finetuning_type": "full",
            "template": template,
            "dataset": name,
            "dataset_dir": str(dataset_dir),
            "cutoff_len": cutoff_len,
            "overwrite_cache": True,
            "preprocessing_num_workers": 1,
            "output_dir": str(work / "output"),
            "cache_dir": str(work / "cache"),
            "report_to": "none",
        }
    )
    return model_args, data_args, training_args


def _check_rows(
    report: dict[str, Any],
    attr: Any,
    files: list[Path],
    args: tuple[Any, Any, Any],
    template: Any,
    tokenizer_module: dict[str, Any],
) -> None:
    """Replay LLaMA-Factory's converter and SFT preprocessor on each row, recording problems."""
    from datasets import load_dataset
    from llamafactory.data.converter import get_dataset_converter
    from llamafactory.data.loader import _get_dataset_processor
    from llamafactory.extras.constants import FILEEXT2TYPE, IGNORE_INDEX

    model_args, data_args, _ = args
    tokenizer = tokenizer_module["tokenizer"]
    builder = FILEEXT2TYPE.get(files[0].suffix.lstrip("."))
    raw = load_dataset(
        builder,
        data_files=[str(f) for f in files],
        split=attr.split,
        cache_dir=model_args.cache_dir,
    )
    converter = get_dataset_converter(attr.formatting, attr, data_args)
    processor = _get_dataset_processor(
        data_args, "sft", template, tokenizer, tokenizer_module.get("processor")
    )
    converted = 0
    for index, row in enumerate(raw):
        with _captured_warnings() as messages:
            try:
                example = converter(row)
                if not example["_prompt"] or not example["_response"]:
                    raise _RowBroken("empty _prompt/_response after conversion")
                converted += 1
                batch = {key: [value] for key, value in example.items()}
                encoded = processor.preprocess_dataset(batch)
                if len(encoded["input_ids"]) != 1:
                    raise _RowBroken("dropped by the supervised preprocessor")
            except Exception as exc:  # noqa: BLE001 - any failure marks the row broken
                report["broken_rows"].append(
                    {"index": index, "reason": _error(exc), "warnings": list(messages)}
                )
                continue
        labels = encoded["labels"][0]
        if all(label == IGNORE_INDEX for label in labels):
            report["all_labels_ignored_rows"].append(index)
        messages_in = example["_prompt"] + example["_response"]
        pairs = template.encode_multiturn(
            tokenizer, messages_in, example["_system"], example["_tools"]
        )
        if sum(len(s) + len(t) for s, t in pairs) > data_args.cutoff_len:
            report["truncated_rows"].append(index)
    report["rows_after_conversion"] = converted


def _verify_one(
    name: str, dataset_dir: Path, tokenizer_dir: Path, template_name: str, cutoff_len: int
) -> dict[str, Any]:
    """Verify one registered dataset; never raises for data problems."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.model import load_tokenizer

    report = _new_report(name)
    with tempfile.TemporaryDirectory(prefix="lf_verify_") as tmp:
        try:
            args = _train_args(
                name, dataset_dir, tokenizer_dir, template_name, cutoff_len, Path(tmp)
            )
            model_args, data_args, training_args = args
            attr = get_dataset_list([name], str(dataset_dir))[0]
            if attr.load_from != "file":
                raise ValueError(
                    f"only local files can be verified, got load_from={attr.load_from}"
                )
            files = _data_files(dataset_dir, attr.dataset_name)
            report["files"] = [str(f) for f in files]
            report["rows_in_file"] = _count_rows(files)
            tokenizer_module = load_tokenizer(model_args)
            template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            report["pipeline_error"] = _error(exc)
            return report

        # 1. The real pipeline, as `llamafactory-cli train` runs it.
        with _captured_warnings() as messages:
            try:
                module = get_dataset(
                    template, model_args, data_args, training_args, stage="sft", **tokenizer_module
                )
                report["rows_after_pipeline"] = len(module["train_dataset"])
            except Exception as exc:  # noqa: BLE001
                report["pipeline_error"] = _error(exc)
        report["warnings"] = messages[:_MAX_WARNINGS]

        # 2. Row by row, to name the rows that break.
        try:
            _check_rows(report, attr, files, args, template, tokenizer_module)
        except Exception as exc:  # noqa: BLE001
            report["pipeline_error"] = report["pipeline_error"] or _error(exc)

    report["ok"] = (
        report["pipeline_error"] is None
        and report["rows_in_file"] is not None
        and report["rows_in_file"] > 0
        and report["rows_after_pipeline"] == report["rows_in_file"]
        and report["rows_after_conversion"] == report["rows_in_file"]
        and not report["broken_rows"]
        and not report["all_labels_ignored_rows"]
    )
    return report


def _problems(report: dict[str, Any]) -> list[str]:
    """Human-readable problem lines for one dataset report."""
    name = report["dataset"]
    out: list[str] = []
    if report["pipeline_error"]:
        out.append(f"dataset {name!r}: loading failed: {report['pipeline_error']}")
    if report["rows_in_file"] == 0:
        out.append(f"dataset {name!r}: no rows")
    if (
        report["rows_after_pipeline"] is not None
        and report["rows_after_pipeline"] != report["rows_in_file"]
    ):
        out.append(
            f"dataset {name!r}: {report['rows_in_file']} rows in file but "
            f"{report['rows_after_pipeline']} after LLaMA-Factory's pipeline"
        )
    for row in report["broken_rows"]:
        detail = f" ({'; '.join(row['warnings'])})" if row["warnings"] else ""
        out.append(f"dataset {name!r}: row {row['index']} broken: {row['reason']}{detail}")
    for index in report["all_labels_ignored_rows"]:
        out.append(f"dataset {name!r}: row {index} has every label ignored (nothing to train on)")
    return out


def verify_datasets(
    dataset_dir: Path,
    tokenizer_dir: Path,
    *,
    template: str = "qwen",
    cutoff_len: int = 4096,
    raise_on_error: bool = False,
) -> dict[str, Any]:
    """Load every dataset in ``dataset_dir/dataset_info.json`` through LLaMA-Factory.

    Args:
        dataset_dir: Folder holding ``dataset_info.json`` and the data files.
        tokenizer_dir: A local tokenizer (or model) directory, e.g. from ``support.tiny_model``.
        template: LLaMA-Factory chat template name.
        cutoff_len: Sequence cutoff, as in training (rows longer are truncated, and listed
            under ``truncated_rows`` for information).
        raise_on_error: Raise ``LFVerificationError`` instead of returning a failed report.

    Returns:
        ``{"ok", "template", "cutoff_len", "dataset_dir", "tokenizer_dir", "datasets",
        "problems"}``, where ``datasets`` maps each name to its report: ``rows_in_file``,
        ``rows_after_conversion`` (non-empty after LLaMA-Factory's format converter),
        ``rows_after_pipeline`` (rows in the tokenized train set of ``get_dataset``),
        ``broken_rows`` (``{"index", "reason", "warnings"}``), ``all_labels_ignored_rows``,
        ``truncated_rows``, ``pipeline_error``, ``warnings`` and ``ok``; ``problems``
        lists every failure as a sentence naming dataset and row.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    dataset_dir, tokenizer_dir = Path(dataset_dir).resolve(), Path(tokenizer_dir).resolve()
    info_path = dataset_dir / "dataset_info.json"
    names = list(json.loads(info_path.read_text(encoding="utf-8")))
    reports = {
        name: _verify_one(name, dataset_dir, tokenizer_dir, template, cutoff_len) for name in names
    }
    problems = [line for report in reports.values() for line in _problems(report)]
    if not names:
        problems.append(f"{info_path}: no datasets registered")
    result = {
        "ok": not problems,
        "template": template,
        "cutoff_len": cutoff_len,
        "dataset_dir": str(dataset_dir),
        "tokenizer_dir": str(tokenizer_dir),
        "datasets": reports,
        "problems": problems,
    }
    if raise_on_error and problems:
        raise LFVerificationError(result)
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns 0 when all rows survive, 1 otherwise."""
    parser = argparse.ArgumentParser(description="Verify SFT datasets through LLaMA-Factory.")
    parser.add_argument("--dataset-dir", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True, help="tokenizer/model dir")
    parser.add_argument("--template", default="qwen")
    parser.add_argument("--cutoff-len", type=int, default=4096)
    parser.add_argument("--json-out", type=Path, help="write the full report here")
    args = parser.parse_args(argv)

    result = verify_datasets(
        args.dataset_dir, args.tokenizer, template=args.template, cutoff_len=args.cutoff_len
    )
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    for name, report in result["datasets"].items():
        print(
            f"lf_verify: {name}: {'OK' if report['ok'] else 'FAIL'} "
            f"rows_in_file={report['rows_in_file']} "
            f"after_conversion={report['rows_after_conversion']} "
            f"after_pipeline={report['rows_after_pipeline']} "
            f"broken={len(report['broken_rows'])} "
            f"all_labels_ignored={len(report['all_labels_ignored_rows'])} "
            f"truncated={len(report['truncated_rows'])}"
        )
    for line in result["problems"]:
        print(f"lf_verify: {line}", file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
