"""diffusers' own Kontext pipeline tests, run a second time with `LayerComposerPipeline`.

The pinned class (pipelines/flux/test_pipeline_flux_kontext.py) runs as diffusers wrote it, for
stock `FluxKontextPipeline`; this subclass changes only `pipeline_class`, so every assertion of
the class holds lc's pipeline to the same contract.
"""

from __future__ import annotations

import diffusers.pipelines

from layercomposer.pipeline import LayerComposerPipeline

from .pipelines.flux import test_pipeline_flux_kontext as pinned


class LayerComposerKontextPipelineFastTests(pinned.FluxKontextPipelineFastTests):
    pipeline_class = LayerComposerPipeline

    @classmethod
    def setUpClass(cls) -> None:
        # test_encode_prompt_works_in_isolation reads `encode_prompt`'s return names from its
        # source, finding the class by its name in `diffusers.pipelines` (ReturnNameVisitor),
        # where only diffusers' own pipelines are: an out-of-tree pipeline is put there for it.
        super().setUpClass()
        diffusers.pipelines.LayerComposerPipeline = LayerComposerPipeline

    @classmethod
    def tearDownClass(cls) -> None:
        del diffusers.pipelines.LayerComposerPipeline
        super().tearDownClass()
