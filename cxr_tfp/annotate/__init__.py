"""Spend expert time where it pays: the annotation loop.

- ``study``: what annotations are worth on your own records (stage 2 with real, control and no
  annotations from one stage-1 model per seed; paired gains with 95% intervals).
- ``requests``: which unannotated images to send to the radiologists (pluggable strategies beside a
  seeded random baseline).
- ``labelstudio``: the requests as a Label Studio project, and its JSON export back as boxes in the
  next span of the raw folder.

Command line: ``python -m cxr_tfp.annotate {study,requests,labelstudio} ...`` (``--help`` on each).
"""
