"""The full scale: real unified MLLMs (Janus-Pro and Emu3 through transformers' native classes).

:mod:`dynamics.full.presets` builds configs, tokenizers and processors offline (a ``tiny`` preset for tests
and real-shape presets for benchmarks), loads checkpoints and tells a checkpoint's model family
(:func:`~dynamics.full.presets.model_family`, from ``config.json`` before anything loads);
:mod:`dynamics.full.sampler` is the Janus image-token sampler (KV cache, classifier-free guidance, per-row
seeds) and teacher-forced scorer, and the pieces every sampler shares (guidance, warping, per-row draws);
:mod:`dynamics.full.janus` is the adapter :class:`~dynamics.full.janus.JanusUnified` that implements
:class:`dynamics.protocol.UnifiedModel`, plus the real-model eNTK probe; :mod:`dynamics.full.emu3` the
Emu3 adapter :class:`~dynamics.full.emu3.Emu3Unified` (one VQ vocabulary read and written through the same
embeddings; its sampler reproduces ``generate`` under the row/column layout constraint) with the
``emu3-tiny`` and ``emu3-8b-shape`` presets. Chameleon is not offered: transformers' ``ChameleonVQVAE`` has
no decoder and ``ChameleonForConditionalGeneration`` masks every image-token logit, so it cannot write images;
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
