"""`lc eval` and `lc bench`: identity, prompt following, image quality and locked-layer fidelity.

- outputs.py: rendered images read through their run manifests
- identity.py: face similarity per subject (InsightFace ArcFace, or dlib offline); matching.py:
  the one-to-one assignment; antelopev2.py: InsightFace's antelopev2 pack
- fidelity.py: PSNR and SSIM of locked layers inside their masks
- vqascore.py, hpsv3.py: thin adapters over t2v_metrics and hpsv3 (optional, loaded lazily)
- availability.py: which metrics can run, where, how to enable the rest (`lc eval --check`)
- external.py, worker.py: VQAScore / HPSv3 run in another environment's python, as a subprocess
- metrics.py: all of them over many outputs; store.py: scores kept between runs
- report.py: the CSV tables and results.md; published.py: the paper's Table 1 rows;
  figures.py: the matplotlib figures
- run.py: `lc eval` end to end; bench.py: `lc bench`, the 1P / 2P / 4P benchmark; heads.py:
  its 1P input, the cropped head
"""
