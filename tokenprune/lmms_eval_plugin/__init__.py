"""tokenprune's model for lmms-eval (https://github.com/EvolvingLMMs-Lab/lmms-eval), registered through the
`lmms_eval.models` entry point: `python -m lmms_eval --model tokenprune --model_args pretrained=DIR,strategy=st3`.

lmms-eval asks for the chat model unless `--force_simple` is given. The entry point is `manifest`, which
lmms-eval calls while it builds its model registry; it only names the classes (`model.TokenpruneModel`,
`chat.TokenpruneChat`), which lmms-eval imports when the model is asked for. See docs/evaluation.md.
"""

MODEL_ID = "tokenprune"


def manifest():
    """lmms-eval's registration of the `tokenprune` model (imported here: lmms-eval calls this from its registry)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id=MODEL_ID,
        simple_class_path="tokenprune.lmms_eval_plugin.model.TokenpruneModel",
        chat_class_path="tokenprune.lmms_eval_plugin.chat.TokenpruneChat",
    )
