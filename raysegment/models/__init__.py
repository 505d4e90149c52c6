"""Segmenters: an encoder -> decoder -> head (`segmenter`), built by raysegment from a timm backbone
and one of its decoders or by another library (`foreign`), with weights and freezing.

Each name is imported from its module (`raysegment.models.rebuild.load_model`,
`raysegment.models.io.ModelMeta`), so `raysegment.models.io` alone (what the registry needs to move
aliases) does not import timm.
"""
