"""Data throughput, measured: each source alone, memory on a token file > 2 GiB, data wait in training.

    python benchmarks/data.py                 # ~10 min on 2 CPU cores; writes its RESULTS.md section

1. Batches/s of each source alone (the recipes' batch shapes), interleaved rounds, medians.
2. Peak RSS of a fresh process that opens a generated token file larger than 2 GiB and reads
   batches from it, against the file's size: memmap reads only the windows (the file is deleted
   afterwards).
3. `perf/data_wait_frac` (the share of step time the loop waits for a batch) of `paxtrain fit`
   runs: transformer_lm reading that token file, and the image recipe through grain with 0 and 2
   worker processes, next to the in-memory LabeledImages.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from report import machine_line, section_title, write_section  # noqa: E402

from paxtrain.data import (  # noqa: E402
    CharCorpus,
    GrainSource,
    LabeledImages,
    TokenFile,
    tokenize_files,
)
from paxtrain.data.text import stdlib_corpus  # noqa: E402

CHUNK_TOKENS = 1 << 25  # 64 MiB of uint16 per write


def write_random_tokens(path: pathlib.Path, gib: float, vocab_size: int = 256) -> int:
    """A token file of uniform random ids, about `gib` GiB, written a chunk at a time."""
    total = int(gib * 2**30) // 2
    rng = np.random.default_rng(0)
    with path.open("wb") as sink:
        for start in range(0, total, CHUNK_TOKENS):
            size = min(CHUNK_TOKENS, total - start)
            sink.write(rng.integers(0, vocab_size, size, dtype=np.uint16).tobytes())
    meta = {"dtype": "uint16", "vocab": "bytes", "vocab_size": vocab_size, "num_tokens": total}
    path.with_name(path.name + ".json").write_text(json.dumps(meta))
    return total


def write_digits_npy(folder: pathlib.Path) -> list[str]:
    """The digits, normalized as LabeledImages serves them, as .npy columns for configs/data/npy."""
    data = LabeledImages("digits")
    splits = data.splits
    files = {
        "train_x": data.normalize(splits.train_images),
        "train_y": splits.train_labels,
        "test_x": data.normalize(splits.test_images),
        "test_y": splits.test_labels,
    }
    for name, array in files.items():
        np.save(folder / f"{name}.npy", array)
    return [
        "data=npy", f"data.train.images={folder}/train_x.npy",
        f"data.train.labels={folder}/train_y.npy", f"data.eval.images={folder}/test_x.npy",
        f"data.eval.labels={folder}/test_y.npy", "data.info.num_classes=10",
        "data.info.image_shape=[8,8,1]",
    ]  # fmt: skip


def batches_per_second(sources: dict, rounds: int = 5, batches: int = 50) -> dict[str, float]:
    """Median batches/s of consecutive steps of each source, rounds taking turns."""
    samples: dict[str, list[float]] = {name: [] for name in sources}
    step = 0
    for _ in range(rounds):
        for name, source in sources.items():
            source.train_batch(step)  # a worker start or a first epoch permutation: not timed
            start = time.perf_counter()
            for i in range(1, batches + 1):
                source.train_batch(step + i)
            samples[name].append(batches / (time.perf_counter() - start))
        step += batches + 1
    return {name: statistics.median(v) for name, v in samples.items()}


def rss_child(path: str, seq_len: int, batch_size: int, batches: int) -> None:
    """Run in a fresh process: opens the token file, reads batches, prints RSS in MiB as JSON."""

    def rss_mib() -> dict[str, float]:
        fields = dict(
            line.split(":", 1)
            for line in pathlib.Path("/proc/self/status").read_text().splitlines()
        )
        kib = {k: float(fields[k].split()[0]) for k in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}
        return {k: v / 1024 for k, v in kib.items()}

    before = rss_mib()
    data = TokenFile(path, seq_len=seq_len, batch_size=batch_size)
    opened = rss_mib()
    start = time.perf_counter()
    for step in range(batches):
        data.train_batch(step)
    elapsed = time.perf_counter() - start
    after = rss_mib()
    # VmHWM, not getrusage's ru_maxrss: Linux carries that over exec from the parent's image.
    print(json.dumps({"before": before, "opened": opened, "after": after,
                      "peak_mib": after["VmHWM"], "batches_per_s": batches / elapsed}))  # fmt: skip


def fit_wait_fraction(args: list[str], run_dir: pathlib.Path) -> dict[str, float]:
    """`paxtrain fit ARGS` in a subprocess; the data wait over the logged windows after the
    first (which holds the compile), and the steps/s."""
    command = [sys.executable, "-m", "paxtrain", "fit", *args, f"run_dir={run_dir}"]
    command += ["trainer.progress=off", "trainer.plot=false"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)}\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if "perf/data_wait_frac" in r][1:]
    return {
        "wait": statistics.mean(r["perf/data_wait_frac"] for r in windows),
        "wait_max": max(r["perf/data_wait_frac"] for r in windows),
        "steps_per_s": statistics.mean(r["perf/steps_per_s"] for r in windows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.25, help="size of the generated token file")
    parser.add_argument("--lm-steps", type=int, default=200)
    parser.add_argument("--image-steps", type=int, default=600)
    parser.add_argument("--rss-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        path, seq_len, batch_size, batches = args.rss_child
        return rss_child(path, int(seq_len), int(batch_size), int(batches))

    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        npy = write_digits_npy(folder)
        text = folder / "stdlib.txt"
        text.write_text(stdlib_corpus())
        tokenize_files([text], folder / "stdlib.bin", vocab="chars")

        # 1. Each source alone, the recipes' shapes.
        columns = {"images": f"{folder}/train_x.npy", "labels": f"{folder}/train_y.npy"}
        sources = {
            "CharCorpus (stdlib, 32 x 128)": CharCorpus(seq_len=128, batch_size=32),
            "TokenFile (stdlib, 32 x 128)": TokenFile(folder / "stdlib.bin", 128, 32),
            "LabeledImages (digits, 64)": LabeledImages("digits", batch_size=64),
            "GrainSource (.npy digits, 64)": GrainSource(columns, batch_size=64),
            "GrainSource (.npy digits, 64, 2 workers)": GrainSource(
                columns, batch_size=64, workers=2
            ),
        }
        rates = batches_per_second(sources)
        sources["GrainSource (.npy digits, 64, 2 workers)"].close()

        # 2. Memory on a token file > 2 GiB: a fresh process, peak RSS.
        big = folder / "big.bin"
        started = time.perf_counter()
        tokens = write_random_tokens(big, args.gib)
        write_s = time.perf_counter() - started
        size_gib = big.stat().st_size / 2**30
        child = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(big), "1024", "16", "2000"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rss = json.loads(child.stdout.strip().splitlines()[-1])

        # 3. Data wait while training.
        lm = [
            "configs/transformer_lm.yaml", "data._target_=paxtrain.data.TokenFile",
            f"data.path={big}", f"trainer.max_steps={args.lm_steps}", "trainer.log_every=25",
            "trainer.eval_every=null", "callbacks=[]", "trainer.checkpoint.enabled=false",
        ]  # fmt: skip
        image = [
            "configs/image_classifier.yaml", f"trainer.max_steps={args.image_steps}",
            "trainer.log_every=50", "trainer.eval_every=null", "trainer.checkpoint.enabled=false",
        ]  # fmt: skip
        fits = {
            "transformer_lm, TokenFile (the > 2 GiB file)": lm,
            "transformer_lm, CharCorpus (in memory)": lm[:1] + lm[3:],
            "image_classifier, LabeledImages (in memory)": image,
            "image_classifier, GrainSource .npy, 0 workers": image + npy,
            "image_classifier, GrainSource .npy, 2 workers": image + npy + ["data.workers=2"],
        }
        waits = {
            name: fit_wait_fraction(fit_args, folder / f"run{i}")
            for i, (name, fit_args) in enumerate(fits.items())
        }
        big.unlink()

    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("grain", "numpy"))
    lines = [
        f"`python benchmarks/data.py` — {machine_line()}, {versions}. The machine was shared with",
        "other engineers' test runs: absolute rates are noisy; rows of one table ran interleaved",
        "(table 1) or one after another (table 3).",
        "",
        "| source alone (consecutive steps) | batches/s |",
        "|---|---|",
        *(f"| {name} | {rate:,.0f} |" for name, rate in rates.items()),
        "",
        f"Token file of {tokens:,} uint16 ids ({size_gib:.2f} GiB, written in {write_s:.0f} s), "
        f"2000 batches of 16 x 1024 read in a fresh process ({rss['batches_per_s']:,.0f} "
        "batches/s). Resident memory (VmRSS; anonymous + file pages) before opening it, once "
        "opened (ids sampled), after the batches, and the peak (VmHWM):",
        "",
        "| VmRSS before | opened | after 2000 batches | of which file pages | peak |",
        "|---|---|---|---|---|",
        f"| {rss['before']['VmRSS']:.0f} MiB | {rss['opened']['VmRSS']:.0f} MiB "
        f"| {rss['after']['VmRSS']:.0f} MiB | {rss['after']['RssFile']:.0f} MiB "
        f"| {rss['peak_mib']:.0f} MiB |",
        "",
        "| paxtrain fit | steps/s | perf/data_wait_frac (mean, max) |",
        "|---|---|---|",
        *(
            f"| {name} | {w['steps_per_s']:.2f} | {w['wait']:.2%}, {w['wait_max']:.2%} |"
            for name, w in waits.items()
        ),
        "",
        f"transformer_lm: {args.lm_steps} steps, windows of 25 steps after the first; "
        f"image_classifier: {args.image_steps} steps, windows of 50. The wait is the time "
        "`next(batches)` blocks the loop; the batches are made on the prefetch thread (and in "
        "grain's workers with `data.workers`). An image step takes ~3-5 ms: there even "
        "in-memory batches show as wait (the prefetch thread shares 2 cores and the GIL with "
        "the loop), so compare grain with the LabeledImages row, not with zero.",
    ]
    write_section(section_title("Data throughput"), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
