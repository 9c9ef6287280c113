"""ShapesWorld: procedurally generated images of coloured shapes with exact ground truth.

Scenes are typed descriptions (`Scene`, `ShapeObject`) sampled from a seed, rendered with PIL, and
paired with masks, boxes, GenEval-style captions/prompt specs and QA pairs. Exact evaluators live in
`harmon.shapesworld.evaluate`.
"""

from harmon.shapesworld.captions import applicable_categories, describe_scene
from harmon.shapesworld.dataset import ShapesWorld
from harmon.shapesworld.export import export_image_folder, export_jsonl, read_jsonl
from harmon.shapesworld.prompts import (
    CATEGORIES,
    Prompt,
    PromptObject,
    PromptSpec,
    generate_prompts,
    prompt_text,
    random_spec,
    scene_for_prompt,
)
from harmon.shapesworld.questions import NEGATIVE_STRATEGIES, QAPair, questions_for_scene
from harmon.shapesworld.render import RenderedScene, render_scene
from harmon.shapesworld.sampling import sample_scene
from harmon.shapesworld.scene import (
    RELATIONS,
    Scene,
    ShapeObject,
    ShapesWorldConfig,
    Stroke,
    Texture,
    relation,
)
from harmon.shapesworld.vocab import COLORS, SHAPES, SIZES

__all__ = [
    "CATEGORIES",
    "COLORS",
    "NEGATIVE_STRATEGIES",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "Prompt",
    "PromptObject",
    "PromptSpec",
    "QAPair",
    "RenderedScene",
    "Scene",
    "ShapeObject",
    "ShapesWorld",
    "ShapesWorldConfig",
    "Stroke",
    "Texture",
    "applicable_categories",
    "describe_scene",
    "export_image_folder",
    "export_jsonl",
    "generate_prompts",
    "prompt_text",
    "questions_for_scene",
    "random_spec",
    "read_jsonl",
    "relation",
    "render_scene",
    "sample_scene",
    "scene_for_prompt",
]
