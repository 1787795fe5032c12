"""The dataset profile of image records: the text statistics plus images per example, image sizes, and
with a processor the visual tokens and trained tokens per example and what max_length would cut."""

from __future__ import annotations

from mg_mlflow.data.chat_tokens import spread, profile
from mg_mlflow.data.vision import image_paths
from mg_mlflow.data.vision_processor import template_messages


def vision_profile(data, processor=None, max_length: int | None = None) -> dict[str, object]:
    """``data validate --vision`` and the vision run's ``datasets/<context>_profile.json``."""
    from PIL import Image

    out = profile(data)
    for key in ("tool_calls", "records_with_tool_calls", "records_with_tools"):
        out.pop(key, None)
    sizes_per_record = []
    for rec in data.records:
        sizes = []
        for path in image_paths(rec):
            with Image.open(path) as img:  # the header only
                sizes.append(img.size)
        sizes_per_record.append(sizes)
    flat = [s for sizes in sizes_per_record for s in sizes]
    out["images"] = spread([len(s) for s in sizes_per_record])
    out["image_width"] = spread([w for w, _ in flat])
    out["image_height"] = spread([h for _, h in flat])
    if processor is None:
        return out
    visual, lengths, trained, prompts = [], [], [], []
    for rec, sizes in zip(data.records, sizes_per_record):
        visual.append(sum(processor._count_for(tuple(s)) for s in sizes))
        total, labelled, prompt = processor.trained_tokens(template_messages(rec), sizes,
                                                           max_length or 1 << 30)
        lengths.append(total)
        trained.append(labelled)
        prompts.append(prompt)
    out.update(visual_tokens=spread(visual), tokens=spread(lengths),
               trained_tokens=spread(trained), total_tokens=sum(lengths))
    if max_length:
        truncated = sum(1 for n in lengths if n > max_length)
        out.update(max_length=max_length, truncated=truncated,
                   truncated_share=round(truncated / len(lengths), 4) if lengths else 0.0,
                   no_trained_token=sum(1 for prompt in prompts if prompt >= max_length))
    return out
