"""The search service (metrictransfer.retrieval.serve): searches by image, item and embeddings, the page,
the token and loopback rules, upload limits and checks, no path from a request reaching the file system,
and concurrent requests' images embedded in shared batches."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from metrictransfer.cli import main  # noqa: E402
from metrictransfer.errors import ConfigError  # noqa: E402
from metrictransfer.retrieval import Gallery  # noqa: E402
from metrictransfer.retrieval.serve import check_binding, create_app, serve  # noqa: E402
from metrictransfer.retrieval.serve_batching import BatcherBusyError, MicroBatcher  # noqa: E402
from tests.helpers import COLOURS, coloured_gallery, make_checkpoint  # noqa: E402

LOCAL = "http://127.0.0.1"
TOKEN = "s3cret-token-for-the-tests"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A gallery of coloured PNGs listed by a CSV with a metadata column, its index and the run's checkpoint."""
    root = tmp_path_factory.mktemp("serve")
    images = coloured_gallery(root / "images")
    rows = ["path,label,shade"] + [
        f"images/{colour}/{i}.png,{colour},{'dark' if i % 2 else 'light'}" for colour in COLOURS for i in range(4)
    ]
    (root / "gallery.csv").write_text("\n".join(rows) + "\n")
    checkpoint = make_checkpoint(root / "model.pt")
    index = root / "index"
    assert main(["index", "--checkpoint", str(checkpoint), "--images", str(root / "gallery.csv"), "--out", str(index)]) == 0
    return images, checkpoint, index


@pytest.fixture(scope="module")
def gallery(built):
    return Gallery(built[2])


@pytest.fixture(scope="module")
def client(gallery):
    app = create_app(gallery, max_upload_bytes=200_000, batch_wait_ms=50)
    with TestClient(app, base_url=LOCAL) as c:
        yield c


def upload(client, path: Path, url: str = "/search/image", name: str | None = None, data: bytes | None = None):
    body = path.read_bytes() if data is None else data
    return client.post(url, files={"image": (name or path.name, body, "image/png")})


def one_line_error(response, status: int) -> str:
    """The refusal's message, checked to be one line of JSON ({"error": ...}) with the status expected."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and body["error"], body
    return body["error"]


# ------------------------------------------------------------------------------------- searching


def test_an_uploaded_gallery_image_finds_itself_first_with_labels_and_metadata(client, built, gallery):
    images = built[0]
    response = upload(client, images / "green" / "2.png", "/search/image?k=5")
    assert response.status_code == 200, response.text
    found = response.json()["neighbours"]
    assert len(found) == 5
    first = found[0]
    assert (first["name"], first["label"], first["metadata"]) == ("2.png", "green", {"shade": "light"})
    assert first["distance"] == pytest.approx(0, abs=1e-3) and first["image"] == f"/items/{first['id']}/image"
    assert gallery.item(first["id"]).path == str((images / "green" / "2.png").resolve())
    assert [n["distance"] for n in found] == sorted(n["distance"] for n in found)
    assert "path" not in first  # the server's paths are not sent


def test_an_item_search_leaves_the_item_out_and_filters_apply(client, gallery):
    item = gallery.item(5)
    body = client.get("/search/item/5?k=4").json()
    assert body["item"]["id"] == 5 and body["item"]["label"] == item.label
    assert [n["id"] for n in body["neighbours"]] and 5 not in [n["id"] for n in body["neighbours"]]
    assert len(body["neighbours"]) == 4
    red = client.get("/search/item/5", params={"k": 20, "where": "label = red and shade = dark"}).json()["neighbours"]
    assert len(red) == 2 and all(n["label"] == "red" and n["metadata"]["shade"] == "dark" for n in red)
    everything = client.get("/search/item/5?k=1000").json()["neighbours"]
    assert len(everything) == gallery.count - 1


def test_embeddings_search_answers_each_row(client, gallery):
    vectors = [gallery.vector(i).tolist() for i in (0, 7, 11)]
    body = client.post("/search/embeddings?k=3", json={"embeddings": vectors}).json()
    assert [row[0]["id"] for row in body["results"]] == [0, 7, 11]
    assert all(len(row) == 3 and row[0]["distance"] == pytest.approx(0, abs=1e-3) for row in body["results"])
    message = one_line_error(client.post("/search/embeddings", json={"embeddings": [[0.0, 1.0]]}), 400)
    assert f"{gallery.dim} numbers" in message
    nan = b'{"embeddings": [[NaN, 0, 0, 0, 0, 0, 0, 0]]}'
    assert "NaN" in one_line_error(client.post("/search/embeddings", content=nan, headers={"content-type": "application/json"}), 400)
    one_line_error(client.post("/search/embeddings", json={"embeddings": []}), 422)


def test_health_version_and_the_openapi_schema(client, gallery):
    assert client.get("/health").json()["status"] == "ok"
    version = client.get("/version").json()
    assert version["index"]["count"] == gallery.count and version["index"]["dim"] == gallery.dim
    assert version["query_model"] == "onnx" and version["columns"] == ["path", "label", "shade"]
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/search/image", "/search/item/{item_id}", "/search/embeddings", "/health", "/version", "/items/{item_id}/image"):
        assert path in paths, path
    assert "multipart/form-data" in paths["/search/image"]["post"]["requestBody"]["content"]
    assert {p["name"] for p in paths["/search/item/{item_id}"]["get"]["parameters"]} >= {"k", "where", "nprobe", "ef", "refine"}
    assert client.get("/docs").status_code == 404  # FastAPI's docs pages load scripts from a CDN


def test_item_images_are_served_by_id_as_files_or_thumbnails(client, gallery):
    response = client.get("/items/3/image")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == Path(gallery.item(3).path).read_bytes()
    thumbnail = client.get("/items/3/image?size=16")
    assert thumbnail.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumbnail.content)) as image:
        assert max(image.size) <= 16
    assert client.get("/items/3").json()["metadata"] == gallery.item(3).metadata


# ------------------------------------------------------------------------------------ bad requests


def test_bad_requests_are_one_line_4xx(client):
    assert "item id 999" in one_line_error(client.get("/search/item/999"), 404)
    one_line_error(client.get("/items/999"), 404)
    one_line_error(client.get("/items/999/image"), 404)
    one_line_error(client.get("/items/-1/image"), 404)
    one_line_error(client.get("/items/99999999999999999999999999/image"), 404)
    assert "k:" in one_line_error(client.get("/search/item/1?k=0"), 422)
    one_line_error(client.get("/search/item/abc"), 422)
    assert "where 'shade ~ dark'" in one_line_error(client.get("/search/item/1", params={"where": "shade ~ dark"}), 400)
    assert "no column 'brand'" in one_line_error(client.get("/search/item/1", params={"where": "brand = x"}), 400)
    assert "searches exactly" in one_line_error(client.get("/search/item/1?nprobe=4"), 400)
    assert "give one" in one_line_error(client.get("/search/item/1?nprobe=4&ef=4"), 400)
    assert "refine 2" in one_line_error(client.get("/search/item/1?k=5&refine=2"), 400)
    one_line_error(client.get("/no/such/thing"), 404)
    one_line_error(client.delete("/search/item/1"), 405)


def test_uploads_that_are_not_images_too_large_or_bombs_are_refused(client, built, monkeypatch):
    images = built[0]
    message = one_line_error(upload(client, images / "red" / "0.png", name="notes.txt", data=b"not an image at all"), 400)
    assert "cannot read the uploaded image 'notes.txt'" in message
    one_line_error(client.post("/search/image", content=b"raw", headers={"content-type": "image/png"}), 400)
    one_line_error(client.post("/search/image", files={"other": ("a.png", b"x", "image/png")}), 400)
    one_line_error(upload(client, images / "red" / "0.png", data=b""), 400)
    assert "at most 0.2 MB" in one_line_error(upload(client, images / "red" / "0.png", data=b"\0" * 300_000), 413)

    def chunks():  # no Content-Length: the limit holds while the body streams in
        yield b'--x\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
        for _ in range(40):
            yield b"\0" * 10_000

    one_line_error(client.post("/search/image", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}), 413)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 40 × 40 image is a "bomb" now
    assert "decompression bomb" in one_line_error(upload(client, images / "red" / "1.png"), 400)


def test_no_path_from_a_request_reaches_the_file_system(client, gallery):
    """Catches a route that serves files by a name or path taken from the request."""
    allowed = {Path(gallery.item(int(i)).path).read_bytes() for i in gallery.ids}
    secret = Path(__file__).read_bytes()
    attempts = [
        "/items/../../etc/passwd",
        "/items/%2e%2e/%2e%2e/etc/passwd",
        "/items/1%2f..%2f..%2fetc%2fpasswd/image",
        "/items/..%2f..%2fpyproject.toml/image",
        f"/items/{Path(__file__)}/image",
        "/..%2f..%2fpyproject.toml",
        "/static/../pyproject.toml",
        "/web/index.html",
        "/app.js/../../serve.py",
        "/%2e%2e/%2e%2e/tests/retrieval/test_serve.py",
        f"/items/1/image?path={Path(__file__)}",
        f"/items/1/image?name=../../{Path(__file__).name}",
    ]
    for url in attempts:
        response = client.get(url)
        assert response.content != secret and b"root:x:0:0" not in response.content, url
        if response.status_code == 200 and url.startswith("/items/"):
            assert response.content in allowed, url
        elif response.status_code == 200:
            assert response.headers["content-type"].startswith(("text/html", "text/javascript")), url
        else:
            assert 400 <= response.status_code < 500, (url, response.status_code)


def test_the_page_loads_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    for name in ("/", "/app.js", "/style.css"):
        text = client.get(name).text
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
        assert "innerHTML" not in text, name  # server text goes into the page as text
    assert page.headers["x-content-type-options"] == "nosniff"


# ---------------------------------------------------------------------------------- exposure rules


def test_binding_beyond_loopback_needs_a_token(tmp_path):
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.org"):
        with pytest.raises(ConfigError, match=f"binding to {host} lets other machines") as refused:
            check_binding(host, None)
        assert "\n" not in str(refused.value)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_binding(host, None)
    check_binding("0.0.0.0", TOKEN)
    with pytest.raises(ConfigError, match="at least 16"):
        check_binding("0.0.0.0", "short")
    with pytest.raises(ConfigError, match="needs? a token|lets other machines"):  # refused before any index is read
        serve(tmp_path / "no-index-here", host="0.0.0.0")


def test_a_token_is_required_on_every_api_request(gallery):
    app = create_app(gallery, token=TOKEN)
    with TestClient(app, base_url="http://search.example.org") as c:  # with a token any host name is served
        refused = c.get("/search/item/1")
        assert "got no token" in one_line_error(refused, 401) and refused.headers["www-authenticate"] == "Bearer"
        assert "wrong token" in one_line_error(c.get("/version", headers={"Authorization": "Bearer nope"}), 401)
        one_line_error(c.get("/items/1/image"), 401)
        one_line_error(c.post("/search/embeddings", json={"embeddings": [[0.0] * gallery.dim]}), 401)
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert c.get("/search/item/1", headers=good).status_code == 200
        assert c.get("/items/1/image", headers=good).status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200  # hold no data of the index
        schemes = c.get("/openapi.json").json()["components"]["securitySchemes"]
        assert any(s.get("scheme", "").lower() == "bearer" for s in schemes.values())


def test_without_a_token_only_loopback_host_names_are_answered(gallery):
    """DNS rebinding: a page of another site resolving its name to 127.0.0.1 must get nothing."""
    with TestClient(create_app(gallery), base_url="http://rebound.example.com") as c:
        assert "127.0.0.1 or localhost" in one_line_error(c.get("/version"), 421)
    with TestClient(create_app(gallery), base_url="http://localhost:8000") as c:
        assert c.get("/version").status_code == 200


# -------------------------------------------------------------------------------- embedding paths


def test_concurrent_uploads_share_batches_and_each_gets_its_own_answer(client, built):
    images = built[0]
    queries = [images / colour / f"{i}.png" for colour in COLOURS for i in range(4)]
    stats = client.app.state.service.batcher.stats
    before = dict(stats.sizes)
    start = threading.Barrier(len(queries))
    answers: dict[int, dict] = {}

    def ask(i: int) -> None:
        start.wait()
        answers[i] = upload(client, queries[i], "/search/image?k=1").json()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, query in enumerate(queries):
        [first] = answers[i]["neighbours"]
        assert (first["name"], first["label"]) == (query.name, query.parent.name) and first["distance"] < 1e-3
    assert any(size > 1 and count > before.get(size, 0) for size, count in stats.sizes.items()), stats.as_dict()


def test_the_run_checkpoint_and_a_file_based_query_model_give_the_same_answers(built, gallery, monkeypatch, tmp_path):
    images, checkpoint, index = built
    query = images / "blue" / "1.png"
    with TestClient(create_app(gallery), base_url=LOCAL) as c:
        expected = upload(c, query, "/search/image?k=4").json()["neighbours"]
    with TestClient(create_app(Gallery(index, checkpoint=checkpoint)), base_url=LOCAL) as c:
        assert c.get("/version").json()["query_model"] == "pytorch"
        found = upload(c, query, "/search/image?k=4").json()["neighbours"]
    assert [n["id"] for n in found] == [n["id"] for n in expected]
    assert [n["distance"] for n in found] == pytest.approx([n["distance"] for n in expected], abs=1e-3)

    class FilesOnly:  # a query model that only embeds files
        def __init__(self, model):
            self.model = model

        def embed(self, paths, bad_hint):
            assert all(p.is_file() and p.parent.parent == tmp_path for p in paths)
            return self.model.embed(paths, bad_hint)

    other = Gallery(index)
    other.query_model = FilesOnly(other.query_model)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with TestClient(create_app(other), base_url=LOCAL) as c:
        assert c.get("/version").json()["query_model"] == "files"
        found = upload(c, query, "/search/image?k=4").json()["neighbours"]
    assert [n["id"] for n in found] == [n["id"] for n in expected]
    assert list(tmp_path.iterdir()) == []  # the private folder went at once


def test_the_batcher_batches_reports_failures_to_each_request_and_bounds_its_queue():
    seen: list[int] = []
    release = threading.Event()

    def forward(items):
        release.wait(5)
        seen.append(len(items))
        if "bad" in items:
            raise ValueError("the model failed")
        return np.asarray([[float(x)] for x in items])

    batcher: MicroBatcher = MicroBatcher(forward, max_batch=4, max_wait_s=5, max_pending=6)
    release.set()
    started = time.monotonic()
    assert batcher.submit(-1).result(5)[0] == -1 and time.monotonic() - started < 1  # alone: no wait
    release.clear()
    for _ in range(3):
        batcher.announce()  # three requests arrived; their images are still being decoded
    first = batcher.submit(0)  # taken by the worker, which waits for the three announced
    futures = [batcher.submit(i, announced=True) for i in (1, 2, 3)]
    release.set()
    assert [f.result(5)[0] for f in [first, *futures]] == [0, 1, 2, 3] and seen == [1, 4]
    batcher.announce()
    failing = [batcher.submit("bad"), batcher.submit(5, announced=True)]  # one batch
    for f in failing:
        with pytest.raises(ValueError, match="the model failed"):
            f.result(5)
    assert batcher.submit(7).result(5)[0] == 7 and seen == [1, 4, 2, 1]  # the worker survives a failed batch
    batcher.close()
    assert batcher.stats.largest == 4 and batcher.stats.images == 6

    release.clear()
    stuck: MicroBatcher = MicroBatcher(forward, max_batch=1, max_wait_s=0, max_pending=2)
    stuck.submit(1)
    with pytest.raises(BatcherBusyError, match="retry"):
        for i in range(10):
            stuck.submit(i)
    release.set()
    stuck.close()


def test_the_json_of_a_search_is_what_the_schema_says(client):
    """Catches a response the OpenAPI schema does not describe (a field renamed on one side only)."""
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    hit = set(schema["Hit"]["properties"])
    body = client.get("/search/item/2?k=2").json()
    assert set(body) == set(schema["ItemNeighbours"]["properties"])
    assert all(set(n) == hit for n in body["neighbours"])
    json.dumps(body)


def test_the_load_benchmark_runs_quick_with_no_errors(tmp_path):
    """benchmarks/serve_load.py --quick: the real server in a process of its own, a tiny model, a few requests."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.serve_load", "--quick", "--out", str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "serve_load.json").read_text())
    assert [level["concurrency"] for level in record["levels"]] == [1, 4]
    assert all(level["requests"] > 0 and level["errors"] == 0 for level in record["levels"]), record["levels"]
    rows = [line for line in (tmp_path / "serve_load.md").read_text().splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 2 and all(row.split("|")[3].strip() == "0" for row in rows), rows


# ------------------------------------------------------------------------------------- updates


def test_an_update_is_answered_without_a_restart(built, tmp_path, monkeypatch):
    """After index --remove, the running service answers from the new generation without a restart."""
    import shutil

    from metrictransfer.retrieval import serve as serve_module
    from metrictransfer.retrieval.update import update_index

    copy = shutil.copytree(built[2], tmp_path / "index")
    monkeypatch.setattr(serve_module, "RELOAD_CHECK_S", 0.0)
    with TestClient(create_app(Gallery(copy)), base_url=LOCAL) as client:
        assert client.get("/items/3").status_code == 200
        update_index(copy, remove="3")
        deadline = time.monotonic() + 30
        while client.get("/version").json()["index"]["generation"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # loaded in the background; the previous generation answers meanwhile
        assert client.get("/version").json()["index"] == {**client.get("/version").json()["index"], "generation": 1, "count": 11}
        one_line_error(client.get("/items/3"), 404)
