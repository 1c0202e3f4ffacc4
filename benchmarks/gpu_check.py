"""The GPU check: one command that measures the real-model paths on a CUDA device and records the GPU table.

Items, in the order they run (``--items`` picks a subset):

- ``bandwidth``: the device's memory bandwidth, measured by a large device-to-device copy (bytes read plus
  bytes written per second), the floor every decode time below is compared with;
- ``janus``: our Janus image-token sampler (:func:`dynamics.full.sampler.sample_image_tokens`) against
  transformers' ``generate(generation_mode="image")`` at one seed: identical tokens (the tiny preset in
  float32, then ``janus-pro-1b-shape`` in bfloat16, where kernels may round differently: the first
  differing token is reported) and the speed ratio (transformers time / ours);
- ``decode``: ``janus-pro-1b-shape`` bf16 decode time per image token (one prompt, no guidance) against the
  memory-bandwidth floor: the bytes of weights one token's forward reads (LLM trunk, generation head and
  aligner) divided by the measured bandwidth; the mean KV-cache bytes are shown beside it;
- ``throughput``: batched-prompt throughput (images/s against batch size; CFG, 576 tokens) of our sampler;
- ``emu3``: our Emu3 sampler (:func:`dynamics.full.emu3.sample_image_tokens`) against transformers'
  ``generate`` with the row/column layout constraint (``prefix_allowed_tokens_fn``, as transformers' Emu3
  example) and the unconditional branch on the negative prompt: identical codes and the speed ratio,
  ``emu3-tiny`` in float32 then ``emu3-8b-shape`` in bf16 on a ``--emu3-grid`` code grid (Emu3's own
  90 x 90 grid is 8,190 decode steps per image, minutes per call);
- ``dpo``: peak CUDA memory of one DPO step with precomputed reference log-probs against a live reference
  model, at Janus-Pro-1B's shape in bf16 (``benchmarks/bench_dpo_memory.py``'s step and measurement).

Random weights everywhere: the numbers measure the code paths and the device, not image quality. Times are
synchronised wall-clock seconds on CUDA (process CPU seconds on the CPU), the minimum over ``--repeats``
alternating runs.

A full run on CUDA replaces the marked GPU section of ``docs/benchmarks.md`` (between ``<!-- gpu_check:begin
-->`` and ``<!-- gpu_check:end -->``; the rest of the file is kept) with its table. ``--quick`` runs every
item on the tiny presets in seconds, and ``--device cpu --quick`` is the CPU smoke run; these write only to
an explicit ``--out``. Without CUDA (and without ``--device cpu``) it says it needs a GPU, writes nothing and
exits 0. When ``--budget-s`` is spent it stops the running item, keeps what it measured and names the items
it skipped. An item that fails is reported and the others still run; the command then exits 1.

    python benchmarks/gpu_check.py                        # on a CUDA machine, < 8 minutes
    python benchmarks/gpu_check.py --device cpu --quick   # CPU smoke run, prints only
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import shlex
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks whose steps are reused
from bench_sampler import PROMPTS  # the sampler benchmark's prompts

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- gpu_check:begin -->", "<!-- gpu_check:end -->"
ITEMS = ("bandwidth", "janus", "decode", "throughput", "emu3", "dpo")
NO_GPU = (
    "gpu_check needs a CUDA GPU (torch.cuda.is_available() is False): nothing measured, nothing written. "
    "The CPU smoke run is --device cpu --quick."
)


class BudgetSpent(Exception):
    """Raised (by SIGALRM) inside the running item when ``--budget-s`` is spent."""


# ---------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--device", default="cuda",
                   help="cuda, cuda:N, or cpu (cpu only with --quick: the real shapes are CUDA-only); "
                        "default cuda (without CUDA: a message, nothing written, exit 0)")
    p.add_argument("--quick", action="store_true",
                   help="every item on the tiny presets (16 image tokens, small copy, batch sizes 1,2,4, the "
                        "small DPO shape, 1 repeat): seconds; writes only to an explicit --out")
    p.add_argument("--out", type=Path, default=None,
                   help=f"markdown file whose marked GPU section ({BEGIN} ... {END}) is replaced, the rest kept "
                        "(appended when absent; the file is created when missing); default: docs/benchmarks.md "
                        "on a full CUDA run, nothing on --quick or CPU runs")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="time budget in seconds from the start (default 420: the whole command under 8 minutes "
                        "with imports); when spent, the running item stops and the rest are skipped, by name")
    p.add_argument("--items", default=",".join(ITEMS),
                   help=f"comma-separated items to run, in this order: {','.join(ITEMS)} (default all)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per comparison, the minimum reported (default 2; 1 with --quick)")
    p.add_argument("--batch-sizes", default=None,
                   help="prompts per sampler call for the throughput item (default 1,4,16,64; 1,2,4 with --quick)")
    p.add_argument("--emu3-grid", type=int, default=None,
                   help="code grid side of the emu3-8b-shape comparison (default 16: 16x16 codes, 272 decode "
                        "steps; Emu3's own is 90), of the emu3-tiny one with --quick (default 4); a full run "
                        "checks emu3-tiny on 8x8")
    p.add_argument("--cfg-scale", type=float, default=5.0,
                   help="classifier-free guidance scale of the sampler items (> 1: transformers' Janus image "
                        "generate fails at 1)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="dtype of the real-shape models (the tiny identity checks run in float32)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, prompts and sampling")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs)")
    return p


def parse_args(argv=None):
    """The parsed flags, checked (usage errors exit with status 2 and name the flag and value)."""
    p = build_parser()
    args = p.parse_args(argv)
    items = [s.strip() for s in args.items.split(",") if s.strip()]
    bad = [s for s in items if s not in ITEMS]
    if bad or not items:
        p.error(f"--items: unknown item(s) {', '.join(map(repr, bad)) or '(none given)'}; items: {','.join(ITEMS)}")
    args.items = [s for s in ITEMS if s in items]
    if not (math.isfinite(args.budget_s) and args.budget_s > 0):
        p.error(f"--budget-s must be a positive number of seconds, got {args.budget_s}")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    sizes = args.batch_sizes or ("1,2,4" if args.quick else "1,4,16,64")
    try:
        args.batch_sizes = [int(s) for s in sizes.split(",")]
    except ValueError:
        p.error(f"--batch-sizes must be comma-separated integers, got {sizes!r}")
    if any(b < 1 for b in args.batch_sizes):
        p.error(f"--batch-sizes must be >= 1, got {sizes!r}")
    if args.emu3_grid is None:
        args.emu3_grid = 4 if args.quick else 16
    if args.emu3_grid < 1:
        p.error(f"--emu3-grid must be >= 1, got {args.emu3_grid}")
    if not (math.isfinite(args.cfg_scale) and args.cfg_scale > 1):
        p.error(f"--cfg-scale must be > 1, got {args.cfg_scale}")
    if args.seed < 0 or args.threads < 1:
        p.error("--seed must be >= 0 and --threads >= 1")
    kind, _, index = args.device.partition(":")
    if kind not in ("cpu", "cuda") or (kind == "cpu" and index) or (index and not index.isdigit()):
        p.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if kind == "cpu" and not args.quick:
        p.error("--device cpu runs only with --quick (the real-shape items are CUDA-only)")
    if args.out is not None:
        try:
            check_out(args.out)
        except ValueError as e:
            p.error(f"--out: {e}")
    return args


# ---------------------------------------------------------------------- the marked section


def check_out(path: Path) -> None:
    """Raise ``ValueError`` unless ``path`` can take the GPU section: its folder exists and, if the file exists,
    it holds either no markers or exactly one ``BEGIN`` followed by one ``END``."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"{path.parent}: no such directory")
    if path.exists():
        text = path.read_text()
        nb, ne = text.count(BEGIN), text.count(END)
        if (nb, ne) not in ((0, 0), (1, 1)) or (nb and text.index(BEGIN) > text.index(END)):
            raise ValueError(f"{path}: want one {BEGIN} line followed by one {END} line (or neither), found "
                             f"{nb} begin and {ne} end marker(s)")


def replace_section(text: str, section: str) -> str:
    """``text`` with the lines between its markers replaced by ``section`` (markers kept); without markers, the
    marked section is appended under a ``## GPU`` heading.

    >>> replace_section("a\\n<!-- gpu_check:begin -->\\nold\\n<!-- gpu_check:end -->\\nb\\n", "new")
    'a\\n<!-- gpu_check:begin -->\\nnew\\n<!-- gpu_check:end -->\\nb\\n'
    """
    body = f"{BEGIN}\n{section.strip()}\n{END}"
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        return head + body + rest.split(END, 1)[1]
    sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    return f"{text}{sep}## GPU\n\n{body}\n"


def write_section(path: Path, section: str) -> None:
    check_out(path)
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    path.write_text(replace_section(old, section))


# ---------------------------------------------------------------------- measurements


def timed(fn: Callable, device) -> tuple:
    """``(fn(), seconds)``: synchronised wall-clock on CUDA, process CPU time on the CPU (robust to other work
    on shared cores): ``benchmarks/bench_sampler.py``'s rule."""
    from bench_sampler import _timed

    return _timed(fn, str(device))


def memory_bandwidth(device, nbytes: int, repeats: int) -> float:
    """Bytes per second moved by ``repeats`` copies of an ``nbytes`` buffer into another on ``device``: each
    copy reads ``nbytes`` and writes ``nbytes`` (what a weight-streaming decode step does is read)."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first-touch and launch costs out of the timing

    def copies():
        for _ in range(repeats):
            dst.copy_(src)

    _, seconds = timed(copies, device)
    return 2 * nbytes * repeats / seconds


def first_difference(a, b) -> int | None:
    """Index of the first differing entry of two equal-shape token tensors (flattened), None if identical."""
    import torch

    diff = torch.nonzero(a.cpu().reshape(-1) != b.cpu().reshape(-1))
    return None if diff.numel() == 0 else int(diff[0, 0])


def janus_generate(model, ids, mask, *, seed: int, cfg_scale: float, temperature: float = 1.0):
    """transformers' Janus image generation of one prompt after ``torch.manual_seed(seed)``: ``(1, M)`` tokens."""
    import torch

    torch.manual_seed(seed)
    return model.generate(input_ids=ids, attention_mask=mask, generation_mode="image", do_sample=True,
                          guidance_scale=cfg_scale, temperature=temperature, top_k=0)


def compare_janus(model, processor, *, seed: int, cfg_scale: float, repeats: int, device) -> dict:
    """Our Janus sampler against transformers' generate on one prompt: identical tokens at each repeat's seed
    (``first_difference`` of the first repeat that differs) and the minimum times of each."""
    from dynamics.full.sampler import prompt_batch, sample_image_tokens

    ids, mask = prompt_batch(processor, PROMPTS[:1], device=device)
    sample_image_tokens(model, ids, mask, seeds=[0], cfg_scale=cfg_scale, image_length=4)  # warm-up
    ours_t, hf_t, first, m = [], [], None, None
    for r in range(repeats):
        s = seed + r
        ref, t = timed(lambda s=s: janus_generate(model, ids, mask, seed=s, cfg_scale=cfg_scale), device)
        hf_t.append(t)
        ours, t = timed(lambda s=s: sample_image_tokens(model, ids, mask, seeds=[s], cfg_scale=cfg_scale), device)
        ours_t.append(t)
        m = ours.shape[1]
        if first is None:
            first = 0 if ref.shape != ours.shape else first_difference(ours, ref)
    return {"identical": first is None, "first_difference": first, "tokens": m, "ours_s": min(ours_t),
            "transformers_s": min(hf_t), "speed_ratio": min(hf_t) / min(ours_t)}


def emu3_prompt(model, processor, *, height: int, width: int, seed: int, device):
    """``(input_ids, attention_mask, negative_ids)`` of one Emu3 generation prompt for an ``height x width``
    grid: the adapter's own (``Emu3Processor``) when there is a processor, else (a shape preset without a
    tokenizer) BOS, twelve seeded text-range ids, image start and the image wrapper token, the negative
    prompt being BOS, image start and wrapper (text-range ids: neither visual nor special tokens)."""
    import torch

    from dynamics.full.emu3 import BOI, BOS, SPATIAL_FACTOR, SPECIAL_TOKENS, WRAPPER, Emu3Unified

    if processor is not None:
        em = Emu3Unified(model, processor, PROMPTS[:1], image_area=height * width * SPATIAL_FACTOR**2)
        if (em.height, em.width) != (height, width):
            raise ValueError(f"the processor makes a {em.height}x{em.width} grid, not {height}x{width}")
        ids, mask = em.generation_inputs([0])
        return ids, mask, em.scorer.negative_ids.to(device)
    vocab = model.config.vocabulary_map
    text_ids = torch.ones(model.config.text_config.vocab_size, dtype=torch.bool)
    text_ids[list(model.vocabulary_mapping.image_tokens)] = False
    text_ids[[vocab[t] for t in SPECIAL_TOKENS if t in vocab]] = False
    text_ids = torch.nonzero(text_ids)[:, 0]
    g = torch.Generator().manual_seed(seed)
    text = text_ids[torch.randint(0, len(text_ids), (12,), generator=g)].tolist()
    ids = torch.tensor([[vocab[BOS], *text, vocab[BOI], vocab[WRAPPER]]], device=device)
    neg = torch.tensor([[vocab[BOS], vocab[BOI], vocab[WRAPPER]]], device=device)
    return ids, torch.ones_like(ids), neg


def emu3_generate(model, ids, mask, negative_ids, *, height: int, width: int, seed: int, cfg_scale: float,
                  temperature: float = 1.0):
    """transformers' Emu3 generate of one prompt after ``torch.manual_seed(seed)``, constrained to the
    row/column layout by the ``prefix_allowed_tokens_fn`` of transformers' Emu3 example (visual tokens inside
    a row, end-of-line at each row's end, then end-of-frame, end-of-image, end-of-sequence), guidance on
    ``negative_ids``; returns the ``(1, height * width)`` codes through transformers' own unwrapping."""
    import torch

    from dynamics.full.emu3 import EOF, EOI, EOL, EOS, PAD, WRAPPER

    vocab = model.config.vocabulary_map
    visual = tuple(model.vocabulary_mapping.image_tokens)
    wrapper, eol, eof, eoi, eos = (vocab[t] for t in (WRAPPER, EOL, EOF, EOI, EOS))
    end = (width + 1) * height

    def allowed(batch_id, input_ids):
        offset = input_ids.shape[0] - int(torch.nonzero(input_ids == wrapper)[0, 0])
        if offset % (width + 1) == 0 and offset <= end:
            return (eol,)
        return {end + 1: (eof,), end + 2: (eoi,)}.get(offset, (eos,) if offset > end + 2 else visual)

    torch.manual_seed(seed)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, guidance_scale=cfg_scale,
                         negative_prompt_ids=negative_ids, negative_prompt_attention_mask=torch.ones_like(negative_ids),
                         temperature=temperature, top_k=0, prefix_allowed_tokens_fn=allowed, max_new_tokens=end + 3,
                         pad_token_id=vocab[PAD])
    layout = out[:, ids.shape[1] : ids.shape[1] + end]
    return model.vocabulary_mapping.convert_bpe2img(layout.reshape(-1, height, width + 1)).reshape(1, -1).long()


def compare_emu3(model, processor, *, height: int, width: int, seed: int, cfg_scale: float, repeats: int,
                 device) -> dict:
    """Our Emu3 sampler against :func:`emu3_generate`: identical codes at each repeat's seed, minimum times."""
    from dynamics.full.emu3 import sample_image_tokens

    ids, mask, neg = emu3_prompt(model, processor, height=height, width=width, seed=seed, device=device)
    kw = {"negative_ids": neg, "cfg_scale": cfg_scale}
    sample_image_tokens(model, ids, mask, seeds=[0], height=1, width=2, **kw)  # warm-up
    ours_t, hf_t, first = [], [], None
    for r in range(repeats):
        s = seed + r
        ref, t = timed(lambda s=s: emu3_generate(model, ids, mask, neg, height=height, width=width, seed=s,
                                                 cfg_scale=cfg_scale), device)
        hf_t.append(t)
        ours, t = timed(lambda s=s: sample_image_tokens(model, ids, mask, seeds=[s], height=height, width=width,
                                                        **kw), device)
        ours_t.append(t)
        if first is None:
            first = 0 if ref.shape != ours.shape else first_difference(ours, ref)
    return {"identical": first is None, "first_difference": first, "tokens": height * width, "ours_s": min(ours_t),
            "transformers_s": min(hf_t), "speed_ratio": min(hf_t) / min(ours_t)}


def janus_decode_bytes(model) -> int:
    """Bytes of weights one Janus image-token forward reads: the LLM trunk (decoder layers, final norm), the
    generation head and aligner, and one row of the generation embeddings (the text embeddings, the vision
    tower and the VQ model are not read while decoding image tokens)."""
    inner = model.model
    lm = inner.language_model
    modules = [lm.layers, lm.norm, inner.generation_head, inner.generation_aligner]
    total = sum(p.numel() * p.element_size() for mod in modules for p in mod.parameters())
    emb = inner.generation_embeddings.weight
    return total + emb.shape[1] * emb.element_size()


def janus_kv_bytes(model, rows: int, prompt_length: int, image_tokens: int) -> float:
    """Mean KV-cache bytes a decode step reads over one image (``rows`` sequences of ``prompt_length`` prompt
    tokens growing by one token per step)."""
    c = model.config.text_config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * next(model.parameters()).element_size()
    return rows * per_token * (prompt_length + (image_tokens - 1) / 2)


def decode_floor(model, processor, *, bandwidth: float, seed: int, device) -> dict:
    """Our sampler's time per image token for one prompt without guidance (one sequence, the pure decode), the
    weight-read floor ``janus_decode_bytes / bandwidth`` and its ratio."""
    from dynamics.full.sampler import prompt_batch, sample_image_tokens

    ids, mask = prompt_batch(processor, PROMPTS[:1], device=device)
    sample_image_tokens(model, ids, mask, seeds=[0], cfg_scale=1.0, image_length=4)  # warm-up
    tokens, seconds = timed(lambda: sample_image_tokens(model, ids, mask, seeds=[seed], cfg_scale=1.0), device)
    m = tokens.shape[1]
    weights = janus_decode_bytes(model)
    kv = janus_kv_bytes(model, 1, ids.shape[1], m)
    per_token = seconds / m
    floor = weights / bandwidth
    return {"tokens": m, "per_token_s": per_token, "weight_bytes": weights, "kv_bytes": kv, "floor_s": floor,
            "floor_kv_s": (weights + kv) / bandwidth, "ratio": per_token / floor}


def batched_throughput(model, processor, batch_sizes: Sequence[int], *, seed: int, cfg_scale: float, device,
                       on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Images/s of our sampler with ``b`` left-padded prompts (cycled from ``PROMPTS``) per call, for each ``b``;
    ``on_row`` receives each row as it is measured (so a stopped sweep keeps what it measured)."""
    from dynamics.full.sampler import prompt_batch, sample_image_tokens

    rows = []
    for b in batch_sizes:
        texts = [PROMPTS[i % len(PROMPTS)] for i in range(b)]
        ids, mask = prompt_batch(processor, texts, device=device)
        seeds = list(range(seed, seed + b))
        sample_image_tokens(model, ids, mask, seeds=seeds, cfg_scale=cfg_scale, image_length=2)  # warm-up
        tokens, seconds = timed(lambda i=ids, m=mask, s=seeds: sample_image_tokens(model, i, m, seeds=s,
                                                                                  cfg_scale=cfg_scale), device)
        row = {"batch": b, "tokens": tokens.shape[1], "seconds": seconds, "images_per_s": b / seconds}
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def dpo_memory(setups: Sequence[tuple[str, str]], *, width_div: int, depth_div: int, image_tokens: int,
               dtype: str, seed: int, device, threads: int = 1, on_row: Callable[[dict], None] | None = None):
    """Peak memory of one DPO step, live reference vs precomputed, per ``(scope, optimizer)``: the step and the
    measurement of ``benchmarks/bench_dpo_memory.py`` (CUDA allocator peak; on CPU a forked child's peak
    resident set), Janus-Pro-1B's shape divided by ``width_div``/``depth_div``."""
    import bench_dpo_memory as bench

    args = argparse.Namespace(width_div=width_div, depth_div=depth_div, image_tokens=image_tokens, pairs=2,
                              beta=0.1, nll_weight=1.0, no_checkpointing=False, seed=seed, device=str(device),
                              dtype=dtype, threads=threads, setups=list(setups))
    if not str(device).startswith("cuda"):
        bench._warm_up(args)  # imports and first-call costs before the children fork
    rows = []
    for scope, optimizer in setups:
        live = bench.measure(args, scope, optimizer, "live")
        pre = bench.measure(args, scope, optimizer, "precomputed")
        if not math.isclose(live["loss"], pre["loss"], rel_tol=1e-3, abs_tol=1e-3):
            raise RuntimeError(f"DPO ({scope}, {optimizer}): live and precomputed losses differ: {live['loss']} vs "
                               f"{pre['loss']}")
        row = {"scope": scope, "optimizer": optimizer, "params": live["params"], "live_bytes": live["peak_bytes"],
               "precomputed_bytes": pre["peak_bytes"], "ratio": pre["peak_bytes"] / live["peak_bytes"],
               "loss_live": live["loss"], "loss_precomputed": pre["loss"]}
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


# ---------------------------------------------------------------------- the run


def run_items(items: Sequence[tuple[str, Callable[[], None]]], *, budget_s: float, start: float,
              stream=None) -> dict:
    """Run ``items`` (name, callable) in order within ``budget_s`` seconds of ``start`` (``time.monotonic``): a
    SIGALRM at the deadline raises :class:`BudgetSpent` inside the running item (main thread; elsewhere the
    budget is checked between items only), which is then reported as stopped; the items not started are
    skipped. An item that raises is reported (its traceback on stderr) and the next one runs, so one failure does
    not lose the other measurements. Returns ``{"done": [...], "stopped": name | None, "skipped": [...],
    "failed": {name: error}}``."""
    stream = stream or sys.stdout
    done, stopped, skipped, failed = [], None, [], {}
    can_alarm = hasattr(signal, "setitimer") and _main_thread()

    def on_alarm(signum, frame):
        raise BudgetSpent()

    old = signal.signal(signal.SIGALRM, on_alarm) if can_alarm else None
    try:
        for k, (name, fn) in enumerate(items):
            left = budget_s - (time.monotonic() - start)
            if left <= 0 or stopped is not None:
                skipped.append(name)
                continue
            print(f"\n== {name} ({left:.0f} s of budget left)", file=stream, flush=True)
            try:
                if can_alarm:
                    signal.setitimer(signal.ITIMER_REAL, left)
                fn()
                done.append(name)
            except BudgetSpent:
                stopped = name
                print(f"   budget of {budget_s:g} s spent: {name} stopped", file=stream, flush=True)
            except Exception as err:  # noqa: BLE001 (reported, and the remaining items still run)
                failed[name] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
                traceback.print_exc()
                print(f"   {name} failed: {failed[name]}", file=stream, flush=True)
            finally:
                if can_alarm:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                _release()
    finally:
        if can_alarm:
            signal.signal(signal.SIGALRM, old)
    if skipped:
        print(f"skipped (budget spent): {', '.join(skipped)}", file=stream, flush=True)
    return {"done": done, "stopped": stopped, "skipped": skipped, "failed": failed}


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _release() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"


def _identity(r: dict) -> str:
    if r["identical"]:
        return "identical tokens"
    return f"tokens differ from position {r['first_difference']} of {r['tokens']}"


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.monotonic()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(NO_GPU)
        return {"measured": False}
    if args.device.startswith("cuda") and torch.cuda.device_count() <= int(args.device.partition(":")[2] or 0):
        print(f"error: --device {args.device}: this machine has {torch.cuda.device_count()} CUDA device(s)",
              file=sys.stderr)
        raise SystemExit(2)
    out = args.out if args.out is not None else (DOC if args.device.startswith("cuda") and not args.quick else None)
    if out is not None:
        check_out(out)  # before any measurement
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)  # torch.cuda.set_device needs an index
        torch.cuda.set_device(device)
    dtype = getattr(torch, args.dtype)
    quick, cuda = args.quick, device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    import transformers

    print(f"gpu_check on {name} ({args.device}), torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{'quick (tiny presets)' if quick else 'real shapes, ' + args.dtype}, budget {args.budget_s:g} s, "
          f"items {','.join(args.items)}", flush=True)

    from dynamics.full.emu3 import build_emu3
    from dynamics.full.presets import build_preset

    rows: list[tuple[str, str, str]] = []  # (item, setting, measured)
    results: dict = {"rows": rows, "device": name}
    cache: dict = {}

    def add(item: str, setting: str, measured: str) -> None:
        rows.append((item, setting, measured))
        print(f"   {setting}: {measured}", flush=True)

    def janus_model():
        """The model of the janus, decode and throughput items, built once (tiny x 16 tokens on --quick)."""
        if "janus" not in cache:
            if quick:
                cache["janus"] = (*build_preset("tiny", seed=args.seed, device=device), "tiny, float32, 16 tokens")
            else:
                model, processor = build_preset("janus-pro-1b-shape", seed=args.seed, dtype=dtype, device=device)
                cache["janus"] = (model, processor, f"janus-pro-1b-shape, {args.dtype}, 576 tokens")
        return cache["janus"]

    def bandwidth():
        nbytes, reps = (64 * 2**20, 5) if quick or not cuda else (2**31, 50)
        bw = memory_bandwidth(device, nbytes, reps)
        results["bandwidth"] = bw
        add("memory bandwidth", f"device-to-device copy of {_mb(nbytes)} x {reps} (read + write)",
            f"{bw / 1e9:,.1f} GB/s")

    def janus():
        cfg = args.cfg_scale
        results["janus"] = []
        tiny_m = 16 if quick else 576
        tiny, tiny_proc = build_preset("tiny", seed=args.seed, image_tokens=tiny_m, device=device)
        r = compare_janus(tiny, tiny_proc, seed=args.seed, cfg_scale=cfg, repeats=args.repeats, device=device)
        del tiny
        results["janus"].append(r)
        _report_sampler(add, "Janus sampler vs generate", f"tiny, float32, {tiny_m} tokens, CFG {cfg:g}", r)
        if not quick:
            model, processor, setting = janus_model()
            r = compare_janus(model, processor, seed=args.seed, cfg_scale=cfg, repeats=args.repeats, device=device)
            results["janus"].append(r)
            _report_sampler(add, "Janus sampler vs generate", f"{setting}, CFG {cfg:g}", r)

    def decode():
        if "bandwidth" not in results:
            bandwidth()
        model, processor, setting = janus_model()
        r = decode_floor(model, processor, bandwidth=results["bandwidth"], seed=args.seed, device=device)
        results["decode"] = r
        add("decode time per token", f"{setting}, one prompt, no CFG, our sampler",
            f"{r['per_token_s'] * 1e3:.3f} ms/token; floor {r['floor_s'] * 1e3:.3f} ms (weights read per token "
            f"{_mb(r['weight_bytes'])} / measured bandwidth; {r['floor_kv_s'] * 1e3:.3f} ms with the mean KV cache "
            f"{_mb(r['kv_bytes'])}): {r['ratio']:.1f}x the floor")

    def throughput():
        model, processor, setting = janus_model()
        results["throughput"] = []

        def on_row(row):
            results["throughput"].append(row)
            add("batched-prompt throughput", f"{setting}, CFG {args.cfg_scale:g}, batch {row['batch']}",
                f"{row['images_per_s']:.3f} images/s ({row['seconds']:.2f} s per call)")

        batched_throughput(model, processor, args.batch_sizes, seed=args.seed, cfg_scale=args.cfg_scale,
                           device=device, on_row=on_row)

    def emu3():
        cache.clear()
        _release()
        cfg = args.cfg_scale
        results["emu3"] = []
        grid = args.emu3_grid if quick else 8
        model, processor = build_emu3("emu3-tiny", seed=args.seed, image_tokens=grid * grid, device=device)
        r = compare_emu3(model, processor, height=grid, width=grid, seed=args.seed, cfg_scale=cfg,
                         repeats=args.repeats, device=device)
        del model
        results["emu3"].append(r)
        _report_sampler(add, "Emu3 sampler vs generate", f"emu3-tiny, float32, {grid}x{grid} codes, CFG {cfg:g}", r)
        if not quick:
            _release()
            model, _ = build_emu3("emu3-8b-shape", seed=args.seed, dtype=dtype, device=device)
            g = args.emu3_grid
            r = compare_emu3(model, None, height=g, width=g, seed=args.seed, cfg_scale=cfg, repeats=args.repeats,
                             device=device)
            del model
            results["emu3"].append(r)
            _report_sampler(add, "Emu3 sampler vs generate",
                            f"emu3-8b-shape, {args.dtype}, {g}x{g} codes, CFG {cfg:g}", r)

    def dpo():
        cache.clear()
        _release()
        results["dpo"] = []
        if quick:
            shape = {"width_div": 16, "depth_div": 12, "image_tokens": 64, "dtype": "float32"}
            setups, label = [("trunk", "adamw")], "Janus-Pro-1B / width 16 / depth 12, float32, 64 tokens"
        else:
            shape = {"width_div": 1, "depth_div": 1, "image_tokens": 576, "dtype": args.dtype}
            setups, label = [("trunk", "adamw"), ("lora", "adamw")], f"Janus-Pro-1B shape, {args.dtype}, 576 tokens"
        what = "peak CUDA memory" if cuda else "peak resident-set growth"

        def on_row(row):
            results["dpo"].append(row)
            add("DPO step memory", f"{label}, 2 pairs, checkpointing, {row['scope']} + {row['optimizer']}",
                f"{what}: live reference {_mb(row['live_bytes'])}, precomputed {_mb(row['precomputed_bytes'])}: "
                f"{row['ratio']:.3f}x")

        dpo_memory(setups, seed=args.seed, device=device, threads=args.threads, on_row=on_row, **shape)

    table = {"bandwidth": bandwidth, "janus": janus, "decode": decode, "throughput": throughput, "emu3": emu3,
             "dpo": dpo}
    status = run_items([(n, table[n]) for n in args.items], budget_s=args.budget_s, start=start)
    results.update(status)
    wall = time.monotonic() - start
    section = render(results, args=args, argv=sys.argv[1:] if argv is None else list(argv), wall_s=wall,
                     versions=(torch.__version__, transformers.__version__))
    print("\n" + section)
    if out is not None:
        write_section(out, section)
        print(f"\nwrote the GPU section of {out}")
    results["written"] = out
    results["measured"] = True
    return results


def _report_sampler(add, item: str, setting: str, r: dict) -> None:
    add(item, setting, f"{_identity(r)}; transformers {r['transformers_s']:.3f} s, ours {r['ours_s']:.3f} s: "
                       f"{r['speed_ratio']:.2f}x")


def render(results: dict, *, args, argv: Sequence[str], wall_s: float, versions: tuple[str, str]) -> str:
    """The markdown GPU section: what ran where, the table, and what was stopped or skipped."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    cmd = shlex.join(["python", "benchmarks/gpu_check.py", *argv])
    lines = [
        (f"Measured by `{cmd}` on {results['device']} ({stamp}; torch {versions[0]}, transformers {versions[1]}; "
         f"{wall_s:.0f} s of a {args.budget_s:g} s budget). Random weights; times are "
         f"{'synchronised wall-clock' if results['device'] != 'CPU' else 'process CPU'} seconds, the minimum of "
         f"{args.repeats} alternating run(s); speed ratios are transformers' time / ours."),
        "",
        "| item | setting | measured |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in results["rows"]),
    ]
    if results.get("stopped") or results.get("skipped") or results.get("failed"):
        lines.append("")
        for name, err in results.get("failed", {}).items():
            lines.append(f"Failed: {name} ({err}).")
        if results.get("stopped"):
            lines.append(f"Stopped when the budget was spent: {results['stopped']} (rows above are what it measured).")
        if results.get("skipped"):
            lines.append(f"Skipped (budget spent): {', '.join(results['skipped'])}.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(1 if main().get("failed") else 0)
