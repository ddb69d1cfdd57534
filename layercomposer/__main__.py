"""`python -m layercomposer` is `lc` (what `accelerate launch -m layercomposer` runs)."""

from .cli.main import main

main()
