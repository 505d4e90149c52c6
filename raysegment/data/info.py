"""`dataset.json`: the class names, ignore index and palette every domain of a dataset shares."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raysegment.errors import DatasetError

INFO_FILE = "dataset.json"


class DatasetInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "dataset"
    classes: list[str] = Field(min_length=2)
    ignore_index: int = Field(255, ge=0, le=255)
    palette: list[tuple[int, int, int]]

    @model_validator(mode="after")
    def _palette_matches_classes(self) -> DatasetInfo:
        if len(self.palette) != len(self.classes):
            raise ValueError(f"palette has {len(self.palette)} colours for {len(self.classes)} classes")
        if self.ignore_index < len(self.classes):
            raise ValueError(f"ignore_index {self.ignore_index} collides with class ids 0..{len(self.classes) - 1}")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def read(cls, root: str | Path) -> DatasetInfo:
        """The dataset.json of a dataset root (a folder or an object-store URI)."""
        from raysegment.data import files

        path = files.join(files.location(root), INFO_FILE)
        text = files.read_if_exists(path)
        if text is None:
            raise DatasetError(
                f"{path} is missing: a raysegment dataset root needs a {INFO_FILE} "
                f"with classes, ignore_index and palette (see `raysegment data synth`)"
            )
        try:
            return cls.model_validate(json.loads(text))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise DatasetError(f"{path} is invalid: {exc}") from exc

    def write(self, root: str | Path) -> None:
        from raysegment.storage import atomic_write_json

        atomic_write_json(Path(root) / INFO_FILE, self.model_dump(mode="json"))


CITYSCAPES = DatasetInfo(
    name="cityscapes",
    classes=[
        "road",
        "sidewalk",
        "building",
        "wall",
        "fence",
        "pole",
        "traffic light",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
    ],
    ignore_index=255,
    palette=[
        (128, 64, 128),
        (244, 35, 232),
        (70, 70, 70),
        (102, 102, 156),
        (190, 153, 153),
        (153, 153, 153),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (255, 0, 0),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 80, 100),
        (0, 0, 230),
        (119, 11, 32),
    ],
)
