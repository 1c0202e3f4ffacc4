"""The full scale: real unified MLLMs (Janus-Pro through transformers' native Janus classes).

:mod:`dynamics.full.presets` builds configs, tokenizers and processors offline (a ``tiny`` preset for tests
and real-shape presets for benchmarks) and loads checkpoints; :mod:`dynamics.full.sampler` is the
image-token sampler (KV cache, classifier-free guidance, per-row seeds) and the teacher-forced scorer;
:mod:`dynamics.full.janus` is the adapter :class:`~dynamics.full.janus.JanusUnified` that implements
:class:`dynamics.protocol.UnifiedModel`, plus the real-model eNTK probe;
:mod:`dynamics.full.data` loads prompt sets (GenEval JSONL, T2I-CompBench text lists) with errors
naming file and line; :mod:`dynamics.full.geneval` holds GenEval's scoring rules over detections;
:mod:`dynamics.full.external` the external judges (a file of judgements, GenEval's rules over a
detector or a file of detections, any transformers VLM), which feed the co-degradation alarm of
:mod:`dynamics.alarm`; :mod:`dynamics.full.distributed` the process group and the DDP wrapper for
torchrun (the CLO loop shards prompts over ranks itself).

Example::

    >>> from dynamics.full.presets import PRESETS
    >>> sorted(PRESETS)
    ['janus-pro-1b-shape', 'janus-pro-7b-shape', 'tiny']
"""
