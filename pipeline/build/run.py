"""`cpt-prep build`: inputs -> filtered, deduplicated, tokenized Arrow shards + manifest.json.

Flow: expand and hash the inputs (eval inputs first, so that training documents can be checked
against them) -> start the executor (`pipeline.executor`: local process pool or Ray) and queue the
first chunks -> load the tokenizer -> pass 1 (`pipeline.build.stages`): scan each chunk in a worker
(`pipeline.build.chunks`: decode, filter, exact key, MinHash band hashes, written as sorted files into
the staging folder) -> merge the hash files per hash range to find the colliding documents
(`pipeline.dedup.collisions`) -> pass 2: read the inputs again in the same chunks, decide the
order-dependent outcomes serially in input order (`pipeline.build.outcomes`) -> tokenize the kept
records in a worker -> write them with `pipeline.shards` (dropped ones go to the drop log) -> write
the manifest last.

Invariants:
- Every record gets exactly one outcome; `Accounting.problems()` is empty or the build fails.
- Output is byte-identical for any `--workers` and `--executor` (the manifest's `created_at` aside;
  set SOURCE_DATE_EPOCH to pin it too).
- The build writes into a hidden staging folder beside the output (`.NAME.tmp-PID`) and renames it
  into place only after the manifest is written, so a failed or interrupted run leaves the old
  output (or nothing) and never a manifest that points at incomplete shards; staging folders of
  killed builds are removed by the next one (`pipeline.build.staging`). A full disk is one line.
- Memory: at most `3 * workers + 16` chunks (~5 MB each, `pipeline.build.stages`) in flight, one
  hash range per merge task (~100 MB), plus the dedup state of the colliding documents only (12
  bytes per colliding entry, 8 per colliding hash and scope, ~150 per stored colliding document);
  a document that collides with nothing costs no memory. Disk: ~180 bytes per document of hash files in the staging folder
  while the build runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from pipeline.build import chunks as chunks_mod
from pipeline.build import stages
from pipeline.build.outcomes import DropLogWriter, OutcomeDecider
from pipeline.build.staging import disk_full_error, make_staging, swap_into_place
from pipeline.dedup.minhash import dedup_params
from pipeline.executor.local import LOST_WORKER_ERRORS, WorkerLost
from pipeline.read import (
    InputFile,
    ReadStats,
    check_distinct,
    check_inputs,
    decode_record,
    describe_file,
    expand_inputs,
    iter_raw_records,
)
from pipeline.shards import ShardWriter
from pipeline.tokenize.backend import choose_backend
from pipeline.tokenize.certificate import write_certificate
from pipeline.tokenize.crosscheck import CrossCheck
from pipeline.tokenize.fast import write_token_table
from pipeline.tokenize.load import load_profile
from schemas import __version__
from schemas.config import DataConfig
from schemas.errors import DataError, InputError
from schemas.manifest import (
    DROP_REASONS,
    MANIFEST_NAME,
    Accounting,
    Manifest,
    SplitInfo,
    TokenizationInfo,
    token_dtype_for_vocab,
    write_manifest,
)

logger = logging.getLogger(__name__)

DROP_LOG_NAME = "drop_log.arrow"
BACKEND_NAME = ".plain-tokenizer.json"  # the tokenizer the workers load; removed before the manifest is written
DEDUP_DIR = ".dedup"  # pass 1's per-chunk scan and hash files (pipeline.dedup.collisions); removed likewise
CERTIFICATE_NAME = ".tokenizer-certificate.json"  # the fast backend's certificate for the workers; removed likewise
TOKEN_TABLE_NAME = ".tokenizer-token-table.json"  # the fast backend's token table for the workers; removed likewise
# What a build writes into its output folder; `--overwrite` refuses to delete anything else.
OUTPUT_ENTRIES = (MANIFEST_NAME, "train", "eval", DROP_LOG_NAME)


@dataclass
class BuildOptions:
    """One `cpt-prep build` run."""

    inputs: list[str]
    """Training inputs: files, folders or globs."""
    output: Path
    """Output folder: manifest.json, train/, eval/, drop_log.arrow."""
    tokenizer: str
    """Hub name or local folder of a transformers tokenizer."""
    data: DataConfig = field(default_factory=DataConfig)
    """The resolved `data` section."""
    eval_inputs: list[str] = field(default_factory=list)
    """Eval inputs (then data.eval_fraction must be 0)."""
    workers: int = 1
    """Worker processes (CPUs of a Ray instance started for the build); 1 runs locally in this process."""
    executor: str = "local"
    """Where tasks run: `local` (process pool) or `ray` (pipeline.executor.ray)."""
    ray_address: str | None = None
    """Ray cluster to connect to (`--executor ray`); None starts Ray on this machine."""
    overwrite: bool = False
    """Replace an existing output folder written by an earlier build."""
    trust_remote_code: bool = False
    """Allow tokenizer code from the tokenizer folder or hub repo."""
    progress: bool = True
    """Show a tqdm progress bar (stderr) over input bytes."""
    chunk_bytes: int = chunks_mod.CHUNK_BYTES
    """Record payload bytes per worker task (no effect on the output)."""


@dataclass
class BuildResult:
    """What a build did (the manifest plus timings for the summary)."""

    manifest: Manifest
    manifest_path: Path
    seconds: float
    input_bytes: int  # on-disk bytes of all inputs
    record_bytes: int  # decompressed record bytes (what MB/s is measured on)
    read_stats: ReadStats


def build_dataset(options: BuildOptions) -> BuildResult:
    """Run a build; CptError (one line) on any user-facing problem, with no manifest written."""
    start, cpu_start, children_start = time.perf_counter(), time.process_time(), _children_cpu_s()
    data = options.data
    if options.eval_inputs and data.eval_fraction > 0:
        raise InputError(f"both --eval and eval_fraction={data.eval_fraction} were given; use one way of making the eval split")
    if options.workers < 1:
        raise InputError(f"--workers {options.workers} is invalid; use an integer >= 1")
    if options.executor not in stages.EXECUTORS:
        raise InputError(f"--executor {options.executor} is unknown; use one of {', '.join(stages.EXECUTORS)}")
    if options.ray_address and options.executor != "ray":
        raise InputError(f"--ray_address {options.ray_address} needs --executor ray")
    files = expand_inputs(options.eval_inputs, role="eval") + expand_inputs(options.inputs, role="train")
    check_distinct(files)
    check_inputs(files, text_field=data.text_field, max_binary_fraction=data.max_binary_fraction)
    output = Path(options.output)
    _check_output(output, overwrite=options.overwrite)
    input_bytes = sum(f.path.stat().st_size for f in files)  # hashed below, while the workers scan
    splits = ("train", "eval") if options.eval_inputs or data.eval_fraction > 0 else ("train",)
    staging = make_staging(output)
    bar = executor = tasks = None
    try:
        dedup_dir = staging / DEDUP_DIR
        dedup_dir.mkdir()
        scan_settings = chunks_mod.ScanSettings(
            formats=tuple(f.fmt for f in files),
            text_field=data.text_field,
            min_length=data.min_length,
            # MinHash only where a near-duplicate lookup can happen.
            minhash=_minhash_kwargs(data) if data.filter_duplicates or (data.decontaminate and "eval" in splits) else None,
            num_bands=data.dedup_num_bands,
            eval_fraction=data.eval_fraction if not options.eval_inputs else 0.0,
            split_seed=data.split_seed,
        )
        stats = ReadStats()
        chunks = stages.chunked(iter_raw_records(files, text_field=data.text_field, stats=stats), options.chunk_bytes, lambda: stats.bytes_read)
        # A local pool costs ~2 s to start (imports, one tokenizer per worker): not worth it for one chunk.
        workers = options.workers if input_bytes > options.chunk_bytes or options.executor != "local" else 1
        executor = stages.start_executor(options.executor, scan_settings, workers=workers, ray_address=options.ray_address)
        in_flight = stages.max_in_flight(options.executor, workers)
        tasks = stages.OrderedTasks(executor, stages.scan_tasks(chunks, dedup_dir), max_in_flight=in_flight)
        tasks.start()  # the workers scan the first chunks while this process loads the tokenizer
        profile = load_profile(options.tokenizer, trust_remote_code=options.trust_remote_code, separator_token=data.separator_token)
        tok_info, backend_json = profile.info, profile.backend_json
        token_dtype = token_dtype_for_vocab(tok_info.vocab_size)
        backend_path, certificate_path, table_path = staging / BACKEND_NAME, staging / CERTIFICATE_NAME, staging / TOKEN_TABLE_NAME
        backend_path.write_text(backend_json, encoding="utf-8")
        choice = choose_backend(backend_json, data.tokenizer_backend)
        if choice.notice:
            logger.info("%s", choice.notice)
        cross = None
        if choice.backend == "fast":
            write_certificate(choice.certificate, certificate_path)
            write_token_table(table_path, backend_json, choice.certificate.key)
            cross = CrossCheck(backend_json, separator_id=tok_info.separator_id, control_ids=tok_info.control_token_ids, dtype=token_dtype)
        encode_settings = chunks_mod.EncodeSettings(
            backend_path=str(backend_path),
            separator_id=tok_info.separator_id,
            control_ids=tuple(tok_info.control_token_ids),
            token_dtype=token_dtype,
            certificate_path=str(certificate_path) if choice.backend == "fast" else None,
            token_table_path=str(table_path) if choice.backend == "fast" else None,
        )
        input_infos = [describe_file(f) for f in files]  # sha256 of every input (~0.3 s per 100 MB)
        if sum(info.num_bytes for info in input_infos) != input_bytes:
            raise DataError("the inputs changed while the build read them (their size changed); build again from inputs that nobody writes to")
        setup_s = time.perf_counter() - start
        # Pass 1: scan every chunk (results on disk), then find the colliding hashes.
        bar = _progress_bar(input_bytes, "scan") if options.progress else None
        chunk_records: list[int] = []
        num_candidates = 0
        for (num_records, read_mark), candidates in tasks:
            chunk_records.append(num_records)
            num_candidates += candidates
            if bar is not None:
                bar.update(read_mark - bar.n)
        if bar is not None:
            bar.close()
        scan_s = time.perf_counter() - start - setup_s
        found = stages.merge_collisions(
            executor, dedup_dir, num_chunks=len(chunk_records), num_candidates=num_candidates,
            num_bands=data.dedup_num_bands if scan_settings.minhash is not None else 0, max_in_flight=in_flight,
        )
        merge_s = time.perf_counter() - start - setup_s - scan_s
        # Pass 2: the same chunks again; decide in input order, tokenize the kept records, write.
        num_reference = 0
        writers = {s: ShardWriter(staging, s, token_dtype=token_dtype, target_bytes=data.shard_target_bytes) for s in splits}
        drop_log = DropLogWriter(staging / DROP_LOG_NAME)
        decider = OutcomeDecider(data=data, roles=[f.role for f in files], writers=writers, drop_log=drop_log, collisions=found)
        bar = _progress_bar(input_bytes, "tokenize") if options.progress else None
        record_bytes = 0
        main_s = 0.0
        again = stages.chunked(iter_raw_records(files, text_field=data.text_field, stats=ReadStats()), options.chunk_bytes, lambda: 0)

        def encode_tasks():
            nonlocal main_s
            for c, chunk in enumerate(again):
                t0 = time.perf_counter()
                if c >= len(chunk_records) or chunk_records[c] != len(chunk.sources):
                    raise DataError(f"the inputs changed while the build read them (chunk {c} has other records than in the first pass); build again from inputs that nobody writes to")
                kept = decider.decide(c, chunk.sources, chunk.lines, chunks_mod.read_scan(dedup_dir, c, len(chunk.sources)))
                main_s += time.perf_counter() - t0
                sources = [chunk.sources[i] for i, _ in kept]
                payloads = [chunk.payloads[i] for i, _ in kept]
                yield (chunk, kept), chunks_mod.encode_chunk, (encode_settings, sources, payloads)

        tasks = stages.OrderedTasks(executor, encode_tasks(), max_in_flight=in_flight)
        num_chunks_again = 0
        for (chunk, kept), encoded in tasks:
            t0 = time.perf_counter()
            num_chunks_again += 1
            record_bytes += sum(len(p) for p in chunk.payloads if p)
            if cross is not None:
                records = [i for i, _ in kept]
                cross.check([(chunk.sources[i], chunk.lines[i]) for i in records], lambda picked: [decode_record(chunk.payloads[records[k]], files[chunk.sources[records[k]]].fmt, data.text_field)[0] for k in picked],
                            encoded.ids, encoded.offsets, source_names=[f.path for f in files])
            num_reference += encoded.num_reference
            decider.write(chunk.sources, chunk.lines, kept, encoded)
            main_s += time.perf_counter() - t0
            if bar is not None:
                bar.update(chunk.read_mark - bar.n)  # progress = input bytes whose records are done
        if num_chunks_again != len(chunk_records):
            raise DataError(f"the inputs changed while the build read them ({len(chunk_records)} chunks in the first pass, {num_chunks_again} in the second); build again from inputs that nobody writes to")
        executor.shutdown(wait=True)
        executor = None
        backend_path.unlink()
        dedup_bytes = _folder_bytes(dedup_dir)
        shutil.rmtree(dedup_dir)
        certificate_path.unlink(missing_ok=True)
        table_path.unlink(missing_ok=True)
        if bar is not None:
            bar.close()
        logger.info(
            "timing: %.1f s setup (inputs, tokenizer), %.1f s scanning, %.1f s merging hashes, %.1f s tokenizing and writing, through %d %s worker(s); "
            "%.1f s deciding and writing in the main process; CPU: %.1f s main process, %.1f s local worker processes",
            setup_s, scan_s, merge_s, time.perf_counter() - start - setup_s - scan_s - merge_s, workers, options.executor,
            main_s, time.process_time() - cpu_start, _children_cpu_s() - children_start,
        )
        logger.info(
            "dedup: %d colliding hashes in memory (%.1f bytes per record), %.1f MB of hash files (%.0f bytes per record)",
            found.num_exact_groups + found.num_band_groups, decider.state_bytes / max(decider.num_records, 1), dedup_bytes / 1e6, dedup_bytes / max(decider.num_records, 1),
        )
        split_infos = {s: _split_info(w.close()) for s, w in writers.items()}
        drop_info = drop_log.close()
        _check_result(decider, files, split_infos, data)
        accounting = Accounting(num_records=decider.num_records, kept=dict(decider.kept), dropped={r: decider.dropped[r] for r in DROP_REASONS if decider.dropped.get(r)})
        problems = accounting.problems()
        if problems:  # a bug, not a user error: never write a manifest that does not add up
            raise RuntimeError("accounting does not add up: " + "; ".join(problems))
        manifest = Manifest(
            tool_version=__version__,
            created_at=_created_at(),
            inputs=input_infos,
            config=dataclasses.asdict(data),
            dedup={**dedup_params(data), "filter_duplicates": data.filter_duplicates, "decontaminate": data.decontaminate and "eval" in splits},
            tokenizer=tok_info,
            token_dtype=token_dtype,
            splits=split_infos,
            accounting=accounting,
            drop_log=drop_info,
            tokenization=TokenizationInfo(
                requested=data.tokenizer_backend,
                backend=choice.backend,
                certificate=choice.certificate.summary() if choice.certificate is not None else None,
                crosscheck_documents=cross.num_checked if cross is not None else 0,
                reference_documents=num_reference,
            ),
        )
        write_manifest(manifest, staging)
        swap_into_place(staging, output)
    except BaseException as exc:
        if bar is not None:
            bar.close()
        if tasks is not None:
            tasks.cancel()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, LOST_WORKER_ERRORS):
            fix = f"retry with fewer --workers than {options.workers}" if options.executor == "local" else "check the Ray cluster's nodes and retry"
            what = str(exc) if isinstance(exc, WorkerLost) else "a worker process died (out of memory or killed)"
            raise DataError(f"{what}; {fix}") from None
        full = disk_full_error(exc, output) if isinstance(exc, Exception) else None
        if full is not None:
            raise full from None
        raise
    return BuildResult(
        manifest=manifest,
        manifest_path=output / MANIFEST_NAME,
        seconds=time.perf_counter() - start,
        input_bytes=input_bytes,
        record_bytes=record_bytes,
        read_stats=stats,
    )


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # joined worker processes
    return usage.ru_utime + usage.ru_stime


def _minhash_kwargs(data: DataConfig) -> dict[str, Any]:
    return {
        "num_perm": data.dedup_num_bands * data.dedup_rows_per_band,
        "seed": data.dedup_seed,
        "word_ngram": data.dedup_word_ngram,
        "char_ngram": data.dedup_char_ngram,
    }


def _split_info(shards) -> SplitInfo:
    return SplitInfo(num_documents=sum(s.num_documents for s in shards), num_tokens=sum(s.num_tokens for s in shards), shards=shards)


def _check_result(decider: OutcomeDecider, files: Sequence[InputFile], split_infos: dict[str, SplitInfo], data: DataConfig) -> None:
    for source_index, f in enumerate(files):
        n = decider.records_per_source.get(source_index, 0)
        if f.fmt == "jsonl" and n and decider.invalid_records_per_source.get(source_index, 0) == n:
            raise InputError(f"no line of {f.path} is a JSON object with a string field {data.text_field!r}; set --text_field to the field that holds the text")
    for split, info in split_infos.items():
        if info.num_documents == 0:
            dropped = ", ".join(f"{r} {n}" for r, n in decider.dropped.items() if n) or "no records read"
            fix = "lower min_length or check the inputs"
            if split == "eval" and data.eval_fraction > 0:
                fix = "raise eval_fraction or give --eval inputs"
            raise DataError(f"nothing left in the {split} split after filtering ({decider.num_records} records in; dropped: {dropped}); {fix}")


def _check_output(output: Path, *, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise InputError(f"output {output} exists and is not a folder; choose a folder path for --output")
    if output.is_dir():
        entries = sorted(p.name for p in output.iterdir())
        if entries and not overwrite:
            raise InputError(f"output folder {output} already exists and is not empty; pass --overwrite to replace it, or choose another --output")
        foreign = [e for e in entries if e not in OUTPUT_ENTRIES and not e.startswith(".")]
        if foreign:
            raise InputError(f"refusing to overwrite {output}: it holds {foreign[0]!r}, which cpt-prep build did not write; choose an empty or new --output folder")


def _created_at() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch and epoch.isdigit() else datetime.now(timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _progress_bar(total: int, stage: str):
    """tqdm over input bytes on stderr, one per pass; off when stderr is not a terminal (CI logs, pipes)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"cpt-prep build: {stage}", mininterval=0.5, leave=False, disable=None)
