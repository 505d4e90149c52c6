"""`raysegment label push|pull`: a labelling round trip through Label Studio's REST API.

push: the images `raysegment select` ranks first go to a Label Studio project (made, or found by
its title) whose labelling config has one brush label per class in the dataset's palette, each
with the model's mask as a pre-annotation, so a person corrects instead of painting from scratch.
pull: every finished task's latest annotation comes back as a mask in raysegment's layout (painted
class ids; unpainted pixels are the ignore index), checked like any mask; unfinished tasks are
skipped and counted. The project's description carries the dataset's classes (`dataset.json`), so
pull needs nothing but the project.

Label Studio is reached over HTTP only (httpx); it is not a dependency. Its token is either a
legacy API token (`Authorization: Token ...`) or a personal access token (a JWT refresh token,
exchanged at `/api/token/refresh` for an access token).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from xml.sax.saxutils import quoteattr

import httpx
import numpy as np
from PIL import Image

from raysegment.apps.select import run_selection
from raysegment.data import DatasetInfo
from raysegment.data.brush import decode, encode
from raysegment.errors import ConfigError, DatasetError, RaySegmentError
from raysegment.storage import atomic_write_bytes

FROM_NAME, TO_NAME = "label", "image"
INFO_MARK = "raysegment dataset: "  # the project description's line holding dataset.json
TIMEOUT_S = 60.0


class LabelStudioError(RaySegmentError):
    """Label Studio refused a call or answered something unexpected."""


class LabelStudio:
    """A thin client of the endpoints the round trip needs."""

    def __init__(self, url: str, token: str) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--label-studio {url!r} is not an http(s) URL")
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=TIMEOUT_S, headers=self._auth(token))

    def _auth(self, token: str) -> dict[str, str]:
        if token.count(".") == 2:  # a personal access token: a JWT to refresh into an access token
            r = httpx.post(f"{self.url}/api/token/refresh", json={"refresh": token}, timeout=TIMEOUT_S)
            self._check(r, "exchanging the access token")
            return {"Authorization": f"Bearer {r.json()['access']}"}
        return {"Authorization": f"Token {token}"}

    @staticmethod
    def _check(r: httpx.Response, what: str) -> None:
        if r.status_code >= 400:
            raise LabelStudioError(f"Label Studio refused {what}: HTTP {r.status_code} {r.text[:200]}")

    def call(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise LabelStudioError(f"cannot reach Label Studio at {self.url} ({what}): {exc}") from exc
        self._check(r, what)
        return r.json() if r.content and "json" in r.headers.get("content-type", "") else r.content

    def project(self, title: str) -> dict[str, Any] | None:
        listed = self.call("GET", "/api/projects", "listing projects", params={"title": title, "page_size": 1000})
        projects = listed["results"] if isinstance(listed, dict) else listed
        return next((p for p in projects if p["title"] == title), None)

    def tasks(self, project: int) -> Iterator[dict[str, Any]]:
        page = 1
        while True:
            found = self.call(
                "GET",
                "/api/tasks",
                "listing tasks",
                params={"project": project, "page": page, "page_size": 100, "fields": "all"},
            )
            items = found["tasks"] if isinstance(found, dict) else found
            yield from items
            if not isinstance(found, dict) or len(items) < 100:
                return
            page += 1


def labelling_config(info: DatasetInfo) -> str:
    labels = "".join(
        f"<Label value={quoteattr(name)} background={quoteattr('#{:02x}{:02x}{:02x}'.format(*colour))}/>"
        for name, colour in zip(info.classes, info.palette)
    )
    return (
        f'<View><Image name="{TO_NAME}" value="$image" zoom="true"/>'
        f'<BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">{labels}</BrushLabels></View>'
    )


def mask_results(mask: np.ndarray, info: DatasetInfo) -> list[dict[str, Any]]:
    """A class-id mask as brush results, one per class present."""
    h, w = mask.shape
    return [
        {
            "from_name": FROM_NAME,
            "to_name": TO_NAME,
            "type": "brushlabels",
            "original_width": w,
            "original_height": h,
            "value": {"format": "rle", "rle": encode(mask == c), "brushlabels": [name]},
        }
        for c, name in enumerate(info.classes)
        if (mask == c).any()
    ]


def results_mask(results: list[dict[str, Any]], info: DatasetInfo, height: int, width: int) -> np.ndarray:
    """Brush results -> a class-id mask; unpainted pixels are the ignore index, later strokes win."""
    mask = np.full((height, width), info.ignore_index, np.uint8)
    for result in results:
        if result.get("type") != "brushlabels":
            continue
        value = result["value"]
        names = value.get("brushlabels") or []
        if value.get("format") != "rle" or len(names) != 1 or names[0] not in info.classes:
            raise DatasetError(f"an annotation paints {names} ({value.get('format')}); classes are {info.classes}")
        size = (result.get("original_height", height), result.get("original_width", width))
        if size != (height, width):
            raise DatasetError(f"an annotation is {size[1]}x{size[0]} for an image of {width}x{height}")
        mask[decode(value["rle"], height, width)] = info.classes.index(names[0])
    return mask


@dataclass(frozen=True)
class Pushed:
    project: int
    title: str
    uploaded: list[str]
    already: list[str]


def push(client: LabelStudio, model_dir: str, images: str, budget: int, title: str, out: str, seed: int = 0) -> Pushed:
    """Select `budget` images, put them (and their pre-labels) in project `title`; images already
    in the project are not uploaded twice."""
    from raysegment.models.io import read_meta

    info = read_meta(str(model_dir)).dataset_info()
    done = run_selection(model_dir, images, budget, out, "active", seed)
    found = client.project(title)
    if found is None:
        description = f"Made by raysegment label push.\n{INFO_MARK}{json.dumps(info.model_dump(mode='json'))}"
        found = client.call(
            "POST",
            "/api/projects",
            "creating the project",
            json={"title": title, "label_config": labelling_config(info), "description": description},
        )
    project = int(found["id"])
    present = {_original_name(t) for t in client.tasks(project)}
    uploaded, already = [], []
    picks = done.selection.picks  # done.files is in the selection's order: the picks head it
    for path, index in zip(done.files, picks):
        if path.name in present:
            already.append(path.name)
            continue
        imported = client.call(
            "POST",
            f"/api/projects/{project}/import",
            f"uploading {path.name}",
            params={"return_task_ids": "true"},
            files={"file": (path.name, path.read_bytes(), "image/png" if path.suffix == ".png" else "image/jpeg")},
        )
        task_ids = imported.get("task_ids") if isinstance(imported, dict) else None
        task = task_ids[0] if task_ids else _task_of(client, project, path.name)
        prelabel = done.selection.evidence[index].prediction.numpy()  # the pre-label select wrote
        client.call(
            "POST",
            "/api/predictions",
            f"pre-annotating {path.name}",
            json={"task": task, "result": mask_results(prelabel, info), "model_version": str(model_dir)},
        )
        uploaded.append(path.name)
    return Pushed(project, title, uploaded, already)


def _original_name(task: dict[str, Any]) -> str:
    """The uploaded file's own name (Label Studio prefixes uploads with `<hash>-`)."""
    stored = task.get("file_upload") or PurePosixPath(str(task["data"].get(TO_NAME, ""))).name
    return stored.split("-", 1)[1] if "-" in stored else stored


def _task_of(client: LabelStudio, project: int, name: str) -> int:
    for task in client.tasks(project):
        if _original_name(task) == name:
            return int(task["id"])
    raise LabelStudioError(f"{name} was uploaded but no task of project {project} holds it")


@dataclass(frozen=True)
class Pulled:
    written: list[str]
    unfinished: int


def pull(client: LabelStudio, title: str, out: str | Path) -> Pulled:
    """Every finished task of project `title` as images/<stem>.png + masks/<stem>.png under `out`
    (a domain folder: `ROOT/DOMAIN`); ROOT/dataset.json from the project's classes."""
    found = client.project(title)
    if found is None:
        raise LabelStudioError(f"Label Studio has no project titled {title!r}")
    info = _project_info(found)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    dataset_json = out.parent / "dataset.json"
    if not dataset_json.exists():
        atomic_write_bytes(dataset_json, json.dumps(info.model_dump(mode="json"), indent=1).encode())
    written, unfinished = [], 0
    for task in client.tasks(int(found["id"])):
        annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not annotations:
            unfinished += 1
            continue
        latest = max(annotations, key=lambda a: (a.get("updated_at") or "", a["id"]))
        raw = client.call("GET", str(task["data"][TO_NAME]), f"reading task {task['id']}'s image")
        image = Image.open(io.BytesIO(raw)).convert("RGB")
        mask = results_mask(latest.get("result") or [], info, image.height, image.width)
        stem = Path(_original_name(task)).stem
        image.save(out / "images" / f"{stem}.png")
        Image.fromarray(mask).save(out / "masks" / f"{stem}.png")
        written.append(stem)
    return Pulled(sorted(written), unfinished)


def _project_info(project: dict[str, Any]) -> DatasetInfo:
    for line in (project.get("description") or "").splitlines():
        if line.startswith(INFO_MARK):
            return DatasetInfo.model_validate(json.loads(line[len(INFO_MARK) :]))
    raise LabelStudioError(
        f"project {project['title']!r} was not made by `raysegment label push` (no classes in its description)"
    )
