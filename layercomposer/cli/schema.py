"""`lc schema`: the canvas file's JSON Schema, for editors and validators."""

from __future__ import annotations

import json

from ..canvas import canvas_json_schema


def schema_cli():
    """Print the JSON Schema of canvas files (version 1).

    Examples:
        lc schema > canvas.schema.json
        # then, in VS Code's YAML extension: # yaml-language-server: $schema=canvas.schema.json
    """
    print(json.dumps(canvas_json_schema(), indent=2))
