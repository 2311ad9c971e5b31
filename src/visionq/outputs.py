"""What models produce: typed outputs that say what they are, from the model to the stores unchanged.

Every output knows the size of the image it describes (in original-image pixels) and can be
turned into JSON for PostgreSQL's ``results.output`` and, cut short, for the job record's summary.
Boxes are the one kind today; captions, classes, masks and keypoints join as new classes with the
same three methods, registered in ``OUTPUT_KINDS``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar


@dataclass(frozen=True)
class Box:
    class_id: int
    label: str
    confidence: float
    x1: float
    y1: float
    x2: float
    y2: float

    def scaled(self, sx: float, sy: float) -> Box:
        return replace(
            self,
            x1=round(self.x1 * sx, 2),
            y1=round(self.y1 * sy, 2),
            x2=round(self.x2 * sx, 2),
            y2=round(self.y2 * sy, 2),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Detections:
    """Boxes with a class and a confidence each, in the image's own pixels."""

    kind: ClassVar[str] = "detections"

    width: int
    height: int
    boxes: tuple[Box, ...] = ()

    def scaled_to(self, width: int, height: int) -> Detections:
        """The same boxes on the image at ``width`` x ``height`` (the model may have seen it smaller)."""
        if (width, height) == (self.width, self.height):
            return self
        sx, sy = width / self.width, height / self.height
        return Detections(width=width, height=height, boxes=tuple(b.scaled(sx, sy) for b in self.boxes))

    @property
    def count(self) -> int:
        return len(self.boxes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "image": {"width": self.width, "height": self.height},
            "detections": [b.as_dict() for b in self.boxes],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Detections:
        image = data["image"]
        return cls(
            width=int(image["width"]),
            height=int(image["height"]),
            boxes=tuple(Box(**box) for box in data.get("detections", [])),
        )


ModelOutput = Detections  # a Union once there are more kinds

OUTPUT_KINDS: dict[str, type[ModelOutput]] = {Detections.kind: Detections}


def output_from_dict(data: dict[str, Any]) -> ModelOutput:
    """An output as stored (JSON) back into its type; outputs stored before kinds existed are boxes."""
    return OUTPUT_KINDS[str(data.get("kind", Detections.kind))].from_dict(data)


def summarize(output: dict[str, Any], *, max_items: int) -> dict[str, Any]:
    """The stored output, cut to ``max_items`` per list: DynamoDB items are capped at 400 KB, while
    PostgreSQL keeps everything (the API reads it from there when ``truncated`` is true)."""
    summary = dict(output)
    truncated = False
    for name, value in output.items():
        if isinstance(value, list):
            summary[f"{name.rstrip('s')}_count"] = len(value)
            if len(value) > max_items:
                summary[name] = value[:max_items]
                truncated = True
    summary["truncated"] = truncated
    return summary
