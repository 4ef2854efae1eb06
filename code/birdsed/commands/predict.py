"""Run a trained birdsed model over recordings: BirdCLEF submission rows (+ frame-wise events).

    python code/predict.py --model MODEL_DIR_OR_TAR_GZ --audio FILES_OR_DIRS... --out preds.csv
                           [--events events.csv [--events-format csv|raven]] [--backend torch|onnx]
                           [--threads N] [--batch-size N] [--amp] [--device auto] [--smooth K]

Rows are `<file stem>_<end second>` with one probability column per label (labels.json order);
recordings that share a stem get their path relative to the input folder instead of the stem.
See docs/predict.md. Exit 0 when at least one recording was predicted, 1 otherwise
(bad model, no usable recording), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from birdsed import predict
from birdsed.data.audio import AUDIO_SUFFIXES
from birdsed.errors import UserError

EXIT_USER_ERROR = 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="model dir or SageMaker's model.tar.gz")
    parser.add_argument("--audio", type=Path, nargs="+", required=True, help="recordings and/or folders of them")
    parser.add_argument("--out", type=Path, required=True, help="submission CSV to write")
    parser.add_argument("--events", type=Path, help="also write frame-wise events (file, onset_s, offset_s, ...)")
    parser.add_argument("--event-threshold", type=float, default=0.5, help="frame probability for an event")
    parser.add_argument(
        "--events-format",
        choices=("csv", "raven"),
        default="csv",
        help="raven: also one Raven Pro selection table per recording in <events stem>_raven/",
    )
    parser.add_argument(
        "--backend", choices=predict.BACKENDS, default="torch", help="onnx: model.onnx on onnxruntime (CPU)"
    )
    parser.add_argument("--threads", type=int, help="CPU threads for the model (default: all cores)")
    parser.add_argument(
        "--batch-size", type=int, help="windows per forward pass (default: 16 on CUDA, 4 on CPU, 1 with onnx)"
    )
    parser.add_argument("--amp", action="store_true", help="bf16 autocast on CPU, fp16 on CUDA")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--smooth", type=int, default=0, metavar="K", help="average each window with K neighbours on each side"
    )
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.smooth < 0:
        parser.error("--smooth must be at least 0")
    if args.backend == "onnx" and (args.amp or args.device not in ("auto", "cpu")):
        parser.error("--backend onnx runs model.onnx in float32 on the CPU: leave out --amp and --device")
    if args.events_format == "raven" and args.events is None:
        parser.error("--events-format raven needs --events (the CSV the tables go beside)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    try:
        inputs = predict.find_audio_inputs(args.audio)
        if not inputs:
            raise UserError(f"No audio files ({', '.join(AUDIO_SUFFIXES)}) found in {' '.join(map(str, args.audio))}")
        raven = args.events_format == "raven"
        raven_out = predict.raven_dir(args.events) if raven else None
        predict.check_outputs(args.out, args.events, [found.path for found in inputs], raven_out)  # before any work
        device = predict.default_device("cpu" if args.backend == "onnx" else args.device)
        with predict.open_model_dir(args.model) as model_dir:
            loaded = predict.load_model(model_dir, device)
            threshold = args.event_threshold if args.events else None
            batch_size = args.batch_size or predict.default_batch_size(args.backend, device)
            predictor = predict.create_predictor(
                loaded, batch_size, args.amp, threshold, args.backend, args.threads, model_dir, args.smooth
            )
        with logging_redirect_tqdm():
            summary = predict.predict_to_csv(
                predictor, inputs, args.out, args.events, progress=not args.quiet, raven=raven
            )
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(summary.line())
    return 0
