"""Stage 4, methods: jaxlump's compressors, the registry every compressor joins, and `compress_to`.

`lump`, `merge_or_remove`, `lump_then_select` and `lump_then_prune` live here; the methods they are compared with
live in `jaxlump.baselines` and join the same registry.
"""
