"""``python -m kasa.perf [--tiny|--quick|--full] [--throughput]``: the command line of the speed benchmarks."""

from __future__ import annotations

import argparse

from kasa.perf.report import run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m kasa.perf", description=__doc__.split("\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="CPU, a few minutes (default)")
    g.add_argument("--full", action="store_true", help="GPU: 7B-shaped Llama, bf16")
    g.add_argument("--tiny", action="store_true", help="seconds: tiny model and matrices (tests)")
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--layers", type=int, default=None, help="override the number of decoder layers")
    ap.add_argument("--skip-truncation", action="store_true")
    ap.add_argument("--skip-methods", action="store_true", help="skip the every-method table")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="also write the Markdown report here")
    ap.add_argument("--throughput", action="store_true",
                    help="only the training-throughput table: padded, length-grouped and packed batches of "
                         "SmolLM2-135M on the commonsense mix (CPU: a few minutes; --full: on the GPU)")
    ap.add_argument("--tp-examples", type=int, default=None, help="throughput: examples per mode and repetition "
                    "(default 16 on the CPU, 512 with --full)")
    ap.add_argument("--tp-reps", type=int, default=None, help="throughput: repetitions (default 2; 5 with --full)")
    ap.add_argument("--tp-mix", type=int, default=2000, help="throughput: records of the mix for the epoch statistics")
    ap.add_argument("--tp-compile", default=None, metavar="BACKEND",
                    help="throughput: also time every batching mode under torch.compile(backend=BACKEND), e.g. "
                         "inductor (the compile column: off / on)")
    ap.add_argument("--generation", action="store_true",
                    help="only the evaluation-generation table: plain and shared-prefix greedy generation of "
                         "SmolLM2-135M for commonsense prompts at two eval batch sizes (CPU: minutes; --full: GPU)")
    ap.add_argument("--gen-prompts", type=int, default=None, help="generation: prompts (default 64; 512 with --full)")
    ap.add_argument("--gen-reps", type=int, default=None, help="generation: repetitions (default 2; 3 with --full)")
    ap.add_argument("--gen-batches", default=None, help="generation: eval batch sizes (default 16,32; 16,64 --full)")
    a = ap.parse_args(argv)
    if a.generation:
        from kasa.perf.generation import generation_section

        batches = [int(b) for b in (a.gen_batches or ("16,64" if a.full else "16,32")).split(",")]
        report = "\n".join(generation_section(prompts=a.gen_prompts or (512 if a.full else 64),
                                               reps=a.gen_reps or (3 if a.full else 2), batch_sizes=batches, r=a.r,
                                               threads=a.threads, device="cuda" if a.full else "cpu"))
        print(report)
        if a.out:
            with open(a.out, "w") as f:
                f.write(report + "\n")
        return
    if a.throughput:
        from kasa.perf.throughput import throughput_section

        full = a.full
        report = "\n".join(throughput_section(examples=a.tp_examples or (512 if full else 16),
                                              reps=a.tp_reps or (5 if full else 2), mix=a.tp_mix, r=a.r,
                                              threads=a.threads, device="cuda" if full else "cpu",
                                              compile_backend=a.tp_compile))
        print(report)
        if a.out:
            with open(a.out, "w") as f:
                f.write(report + "\n")
        return
    profile = "full" if a.full else "tiny" if a.tiny else "quick"
    report = run(profile, r=a.r, layers=a.layers, skip_truncation=a.skip_truncation, threads=a.threads,
                 skip_methods=a.skip_methods)
    print(report)
    if a.out:
        with open(a.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
