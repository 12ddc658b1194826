"""The chat form of the `tokenprune` lmms-eval model: requests carry `doc_to_messages` (lmms-eval's chat
protocol) instead of a context and `doc_to_visual`. Everything after the sample is the simple model's."""

from __future__ import annotations

from lmms_eval.protocol import ChatMessages

from .model import Sample, TokenpruneModel, _is_padding


class TokenpruneChat(TokenpruneModel):
    is_simple = False

    def sample(self, request) -> Sample:
        _, doc_to_messages, generation, doc_id, task, split = request.args
        doc = self.task_dict[task][split][doc_id]
        chat = ChatMessages(messages=doc_to_messages(doc))
        images, videos, audios = chat.extract_media()
        images = self._images(images + videos + audios, task, doc_id)
        messages = []
        for message in chat.messages:
            content = []
            for item in message.content:
                if item.type == "text":
                    content.append({"type": "text", "text": item.text})
                else:  # media: images only (`_images` refused the rest); the processor gets them in this order
                    content.append({"type": "image"})
            messages.append({"role": message.role, "content": content})
        prompt = self.loaded.chat_prompt(messages)
        return Sample(task, doc_id, images, prompt, dict(generation or {}), _is_padding(request))
