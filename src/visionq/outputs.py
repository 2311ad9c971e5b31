"""What models produce: typed outputs that say what they are, from the model to the stores unchanged.

Every output is one ``Output`` subclass: the size of the image it describes (original-image pixels
once the core has scaled it) and a tuple of items of one type (boxes, captions, classes, masks as
polygons, poses, oriented boxes). Each turns into JSON for PostgreSQL's ``results.output`` and,
cut short, for the job record's summary; the result store writes each kind's items into its own
table too (``stores/result_store.py``), so they can be queried with SQL.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

Point = tuple[float, float]


def _xy(value: float, scale: float) -> float:
    return round(value * scale, 2)


class Item(Protocol):
    def scaled(self, sx: float, sy: float) -> Self: ...


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
        return replace(self, x1=_xy(self.x1, sx), y1=_xy(self.y1, sy), x2=_xy(self.x2, sx), y2=_xy(self.y2, sy))


@dataclass(frozen=True)
class Caption:
    text: str
    score: float | None = None  # the mean log-probability per generated token (higher is surer)

    def scaled(self, sx: float, sy: float) -> Caption:
        return self


@dataclass(frozen=True)
class ClassScore:
    class_id: int | None  # None for zero-shot labels, which have no index in a trained head
    label: str
    score: float

    def scaled(self, sx: float, sy: float) -> ClassScore:
        return self


@dataclass(frozen=True)
class Segment:
    """One instance mask as a polygon (its outline), with the instance's box."""

    class_id: int
    label: str
    confidence: float
    box: Box
    polygon: tuple[Point, ...]

    def scaled(self, sx: float, sy: float) -> Segment:
        polygon = tuple((_xy(x, sx), _xy(y, sy)) for x, y in self.polygon)
        return replace(self, box=self.box.scaled(sx, sy), polygon=polygon)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Segment:
        return cls(
            class_id=int(data["class_id"]),
            label=str(data["label"]),
            confidence=float(data["confidence"]),
            box=Box(**data["box"]),
            polygon=tuple((float(x), float(y)) for x, y in data["polygon"]),
        )


@dataclass(frozen=True)
class Pose:
    """One instance's keypoints (x, y, confidence each, in the model's keypoint order) and box."""

    class_id: int
    label: str
    confidence: float
    box: Box
    keypoints: tuple[tuple[float, float, float], ...]

    def scaled(self, sx: float, sy: float) -> Pose:
        keypoints = tuple((_xy(x, sx), _xy(y, sy), c) for x, y, c in self.keypoints)
        return replace(self, box=self.box.scaled(sx, sy), keypoints=keypoints)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pose:
        return cls(
            class_id=int(data["class_id"]),
            label=str(data["label"]),
            confidence=float(data["confidence"]),
            box=Box(**data["box"]),
            keypoints=tuple((float(x), float(y), float(c)) for x, y, c in data["keypoints"]),
        )


@dataclass(frozen=True)
class OrientedBox:
    """A rotated box: its four corners, clockwise from the model's first (what SQL and drawing
    need), plus the centre form the model produced (angle in radians)."""

    class_id: int
    label: str
    confidence: float
    cx: float
    cy: float
    width: float
    height: float
    angle: float
    corners: tuple[Point, ...]

    def scaled(self, sx: float, sy: float) -> OrientedBox:
        # The corners scale exactly; the centre form only when the scaling keeps the aspect ratio,
        # which the core's decode-to-model-size does (one factor for both sides).
        corners = tuple((_xy(x, sx), _xy(y, sy)) for x, y in self.corners)
        return replace(
            self,
            cx=_xy(self.cx, sx),
            cy=_xy(self.cy, sy),
            width=_xy(self.width, sx),
            height=_xy(self.height, sy),
            corners=corners,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OrientedBox:
        values = {f.name: data[f.name] for f in fields(cls) if f.name != "corners"}
        return cls(**values, corners=tuple((float(x), float(y)) for x, y in data["corners"]))


ItemT = TypeVar("ItemT", Box, Caption, ClassScore, Segment, Pose, OrientedBox)


@dataclass(frozen=True)
class Output(Generic[ItemT]):
    """One image's output: ``items`` of one type, in the pixels of a ``width`` x ``height`` image."""

    kind: ClassVar[str]
    item_type: ClassVar[type[Any]]
    list_name: ClassVar[str]  # the items' name in JSON
    count_name: ClassVar[str]  # the summary's count of them

    width: int
    height: int
    items: tuple[ItemT, ...] = ()

    def scaled_to(self, width: int, height: int) -> Self:
        """The same output on the image at ``width`` x ``height`` (the model may have seen it smaller)."""
        if (width, height) == (self.width, self.height):
            return self
        sx, sy = width / self.width, height / self.height
        return replace(self, width=width, height=height, items=tuple(item.scaled(sx, sy) for item in self.items))

    @property
    def count(self) -> int:
        return len(self.items)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "image": {"width": self.width, "height": self.height},
            self.list_name: [asdict(item) for item in self.items],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        image = data["image"]
        make = getattr(cls.item_type, "from_dict", None) or (lambda d: cls.item_type(**d))
        return cls(
            width=int(image["width"]),
            height=int(image["height"]),
            items=tuple(make(item) for item in data.get(cls.list_name, [])),
        )


@dataclass(frozen=True)
class Detections(Output[Box]):
    kind = "detections"
    item_type = Box
    list_name = "detections"
    count_name = "detection_count"


@dataclass(frozen=True)
class Captions(Output[Caption]):
    kind = "captions"
    item_type = Caption
    list_name = "captions"
    count_name = "caption_count"


@dataclass(frozen=True)
class Classifications(Output[ClassScore]):
    """Top-k classes, best first."""

    kind = "classifications"
    item_type = ClassScore
    list_name = "classes"
    count_name = "class_count"


@dataclass(frozen=True)
class Segments(Output[Segment]):
    kind = "segments"
    item_type = Segment
    list_name = "segments"
    count_name = "segment_count"


@dataclass(frozen=True)
class Poses(Output[Pose]):
    kind = "poses"
    item_type = Pose
    list_name = "poses"
    count_name = "pose_count"


@dataclass(frozen=True)
class OrientedBoxes(Output[OrientedBox]):
    kind = "oriented_boxes"
    item_type = OrientedBox
    list_name = "oriented_boxes"
    count_name = "oriented_box_count"


ModelOutput = Detections | Captions | Classifications | Segments | Poses | OrientedBoxes

OUTPUT_KINDS: dict[str, type[ModelOutput]] = {
    kind.kind: kind for kind in (Detections, Captions, Classifications, Segments, Poses, OrientedBoxes)
}


def output_from_dict(data: dict[str, Any]) -> ModelOutput:
    """An output as stored (JSON) back into its type; outputs stored before kinds existed are boxes."""
    return OUTPUT_KINDS[str(data.get("kind", Detections.kind))].from_dict(data)


def summarize(output: dict[str, Any], *, max_items: int) -> dict[str, Any]:
    """The stored output, its list cut to ``max_items``: DynamoDB items are capped at 400 KB, while
    PostgreSQL keeps everything (the API reads it from there when ``truncated`` is true)."""
    kind = OUTPUT_KINDS[str(output.get("kind", Detections.kind))]
    items = output.get(kind.list_name, [])
    summary = dict(output)
    summary[kind.count_name] = len(items)
    summary[kind.list_name] = items[:max_items]
    summary["truncated"] = len(items) > max_items
    return summary
