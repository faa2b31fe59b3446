"""Dataset preparation: each benchmark's published layout -> the project's manifest (SPEC §5).

One module per layout family; :mod:`anomaly_ov.data.prepare.command` is the shared command line behind the
thin ``scripts/prepare_<dataset>.py`` files. The readers follow the field's zero-shot practice (AnomalyCLIP,
AdaCLIP, InCTRL), the published Table 2's numbers come from:

* :mod:`.elpv` -- a solar cell is anomalous when its defect probability is 1.0 (InCTRL's conversion);
  "any probability above 0" is the named option ``--label-rule any``;
* :mod:`.aitex` -- the 4096x256 fabric strips cut into 256x256 patches (a patch is anomalous when it holds
  defect pixels, its mask cut alike); ``--whole-strips`` keeps the strips;
* :mod:`.layouts` -- BTAD, MPDD, BrainMRI, HeadCT, Br35H and the folder helpers every reader shares.
"""
