"""A batch's output and error files, downloaded next to where the user works."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from barge.client.http import Client


def default_paths(batch_id: str) -> tuple[Path, Path]:
    """``<batch_id>.output.jsonl`` and ``<batch_id>.errors.jsonl`` in the current dir."""
    return Path(f"{batch_id}.output.jsonl"), Path(f"{batch_id}.errors.jsonl")


def download_results(client: Client, batch: dict[str, Any], output: Path | None,
                     errors: Path | None) -> list[Path]:
    """Download the files the batch has (output to ``output``, errors to ``errors``,
    else the default paths), saying on stderr what went where; returns the paths
    written."""
    default_output, default_errors = default_paths(batch["id"])
    written: list[Path] = []
    for key, dest, what in (("output_file_id", output or default_output, "results"),
                            ("error_file_id", errors or default_errors, "errors")):
        file_id = batch.get(key)
        if not file_id:
            continue
        got = client.download(file_id, dest)
        click.echo(f"wrote {got.lines} {what} to {dest}", err=True)
        written.append(dest)
    return written
