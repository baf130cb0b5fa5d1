"""The JSON API of `scan serve`: answers equal to the library's, and every bad request a 4xx naming the field."""

from __future__ import annotations

import asyncio
import io
import json
import random

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("fastapi")

import httpx
from fastapi.testclient import TestClient
from PIL import Image

from photo_models import NUM_PHOTOS
from scan.errors import ConfigError
from scan.serve import ServeSettings, create_app


def client_for(index, **settings) -> TestClient:
    settings.setdefault("access_log", False)
    return TestClient(create_app(index, ServeSettings(**settings)))


@pytest.fixture(scope="module")
def client(served_index):
    with client_for(served_index) as client:
        yield client


def a_photo(served_folder):
    return next((served_folder / "photos").glob("*.jpg"))


def jpeg_bytes(size=(64, 48), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def assert_error(response, status, field):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"]
    assert body["error"]["field"] == field, body


# ---------------------------------------------------------------- answers


def test_health_says_what_the_index_holds(client):
    body = client.get("/api/health").json()
    assert body["status"] == "ok"
    assert body["photos"] == NUM_PHOTOS and body["captions"] == 5 * NUM_PHOTOS


def test_search_answers_what_the_library_answers(client, served_index):
    query = "a dog runs through the grass"
    body = client.get("/api/search", params={"q": query, "k": 5}).json()
    expected = served_index.search(query, k=5, shortlist=100)
    assert [h["id"] for h in body["hits"]] == [h.id for h in expected]
    np.testing.assert_allclose([h["score"] for h in body["hits"]], [h.score for h in expected], rtol=1e-6)
    assert [h["rank"] for h in body["hits"]] == [1, 2, 3, 4, 5]
    assert all(h["thumbnail"] == f"/api/photos/{h['id']}/thumbnail" for h in body["hits"])


def test_concurrent_queries_are_batched_and_answered_as_if_alone(served_index):
    queries = [
        "a dog runs through the grass",
        "two children play",
        "a man in a red shirt",
        "a girl on a swing",
        "people walking on the street",
        "a black dog and a white dog",
    ]
    app = create_app(served_index, ServeSettings(access_log=False, max_batch=8, batch_wait_ms=50))

    async def ask_all():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await asyncio.gather(
                *(http.get("/api/search", params={"q": q, "k": 3 + i}) for i, q in enumerate(queries))
            )

    responses = asyncio.run(ask_all())
    service = app.state.service
    assert service.queries == len(queries)
    assert service.batches < len(queries)  # gathered: fewer first-stage calls than queries
    for i, (query, response) in enumerate(zip(queries, responses, strict=True)):
        alone = served_index.search(query, k=3 + i, shortlist=service.shortlist)
        assert [h["id"] for h in response.json()["hits"]] == [h.id for h in alone]


def test_explain_gives_each_word_a_distribution_over_the_photo_boxes(client, served_index, served_folder):
    query = "a dog runs through the grass"
    item = served_index.store.ids()[3]
    body = client.get("/api/explain", params={"q": query, "id": item}).json()
    boxes = np.asarray(body["boxes"])
    assert boxes.shape == (served_index.store.num_regions, 4)
    words = [w["text"] for w in body["words"]]
    assert words[0] == "<start>" and words[-1] == "<end>" and "dog" in words
    assert [w["special"] for w in body["words"]] == [w in ("<start>", "<end>") for w in words]
    for word in body["words"]:
        weights = np.asarray(word["weights"])
        assert weights.shape == (len(boxes),) and abs(weights.sum() - 1) < 1e-3
        assert word["top"][0] == int(np.argmax(weights))
    with Image.open(served_index.photo_path(item)) as photo:
        assert (body["width"], body["height"]) == photo.size
    seen = served_index.explain(query, item)
    assert body["score"] == pytest.approx(seen.score, rel=1e-5)


def test_photos_are_served_by_id_and_thumbnails_are_small_jpegs(client, served_index):
    item = served_index.store.ids()[0]
    photo = client.get(f"/api/photos/{item}")
    assert photo.status_code == 200
    assert photo.content == served_index.photo_path(item).read_bytes()
    thumbnail = client.get(f"/api/photos/{item}/thumbnail")
    assert thumbnail.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumbnail.content)) as small:
        assert max(small.size) == 320


def test_an_uploaded_photo_finds_the_captions_the_library_finds(client, served_index, served_folder, feature_cache):
    photo = a_photo(served_folder)
    response = client.post(
        "/api/search/image", params={"k": 5}, files={"photo": (photo.name, photo.read_bytes(), "image/jpeg")}
    )
    assert response.status_code == 200, response.text
    expected = served_index.search_image(photo, k=5, cache=feature_cache)
    assert [h["caption"] for h in response.json()["hits"]] == [h.text for h in expected]


def test_the_page_and_its_assets_are_served_and_fetch_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and '<form id="search-form"' in page.text
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert "http://" not in asset.text and "https://" not in asset.text
    assert "http://" not in page.text and "https://" not in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_the_api_is_documented_without_a_cdn(client):
    schema = client.get("/api/openapi.json").json()
    assert {"/api/search", "/api/search/image", "/api/explain", "/api/photos/{id}", "/api/health"} <= set(
        schema["paths"]
    )
    docs = client.get("/api/docs")
    assert docs.status_code == 200 and "/api/explain" in docs.text and "cdn" not in docs.text.lower()


def test_one_json_line_per_request_is_logged_with_its_latency(served_index, capsys):
    with client_for(served_index, access_log=True) as client:
        client.get("/api/search", params={"q": "a dog", "k": 2})
        client.get("/api/search", params={"q": "", "k": 2})
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [(line["path"], line["status"]) for line in lines] == [("/api/search", 200), ("/api/search", 422)]
    assert all(line["ms"] >= 0 and line["method"] == "GET" for line in lines)


# ---------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    ("path", "params", "status", "field"),
    [
        ("/api/search", {"k": 5}, 422, "q"),
        ("/api/search", {"q": "", "k": 5}, 422, "q"),
        ("/api/search", {"q": "   ", "k": 5}, 422, "q"),
        ("/api/search", {"q": "x" * 501}, 422, "q"),
        ("/api/search", {"q": "zzqx qqzv"}, 422, "q"),
        ("/api/search", {"q": "a dog", "k": 0}, 422, "k"),
        ("/api/search", {"q": "a dog", "k": -3}, 422, "k"),
        ("/api/search", {"q": "a dog", "k": NUM_PHOTOS + 1}, 422, "k"),
        ("/api/search", {"q": "a dog", "k": 10**30}, 422, "k"),
        ("/api/search", {"q": "a dog", "k": "ten"}, 422, "k"),
        ("/api/explain", {"q": "a dog", "id": 10**6}, 404, "id"),
        ("/api/explain", {"q": "a dog", "id": -1}, 404, "id"),
        ("/api/explain", {"q": "a dog", "id": "../../etc/passwd"}, 422, "id"),
        ("/api/explain", {"q": "a dog"}, 422, "id"),
        ("/api/photos/999999", {}, 404, "id"),
        ("/api/photos/..%2F..%2Fetc%2Fpasswd", {}, 404, None),  # no such route once the slashes are decoded
        ("/api/photos/1e3/thumbnail", {}, 422, "id"),
        ("/static/..%2F..%2Fsettings.py", {}, 404, None),
        ("/static/index.html", {}, 404, "name"),
        ("/no/such/route", {}, 404, None),
    ],
)
def test_bad_requests_are_4xx_json_naming_the_field(client, path, params, status, field):
    assert_error(client.get(path, params=params), status, field)


def test_traversal_in_the_path_never_reaches_a_file(client):
    for path in ("/api/photos/../../../etc/passwd", "/static/../../../../etc/passwd", "/api/photos/%2e%2e/x"):
        response = client.get(path)
        assert 400 <= response.status_code < 500
        assert b"root:" not in response.content


@pytest.mark.parametrize(
    ("files", "data", "headers", "status"),
    [
        (None, None, {"content-type": "application/json"}, 415),
        ({"photo": ("a.txt", b"hello, not a photo", "text/plain")}, None, None, 415),
        ({"photo": ("a.jpg", b"", "image/jpeg")}, None, None, 422),
        ({"photo": ("a.jpg", jpeg_bytes()[:60], "image/jpeg")}, None, None, 422),
        ({"other": ("a.jpg", jpeg_bytes(), "image/jpeg")}, None, None, 422),
        (None, {"photo": "just text"}, None, 415),  # a urlencoded form
    ],
)
def test_bad_uploads_are_4xx_naming_the_photo_field(client, files, data, headers, status):
    response = client.post("/api/search/image", files=files, data=data, headers=headers)
    assert_error(response, status, "photo")


def test_uploads_over_the_byte_and_pixel_limits_are_refused_before_decoding(served_index):
    with client_for(served_index, max_upload_bytes=4000, max_pixels=100 * 100) as client:
        big = jpeg_bytes((600, 400), (10, 200, 30)) + b"\0" * 70_000
        assert_error(client.post("/api/search/image", files={"photo": ("a.jpg", big, "image/jpeg")}), 413, "photo")
        wide = jpeg_bytes((400, 300))  # small in bytes, too many pixels
        assert len(wide) < 4000
        assert_error(client.post("/api/search/image", files={"photo": ("a.jpg", wide, "image/jpeg")}), 413, "photo")
        fine = jpeg_bytes((90, 90))
        assert client.post("/api/search/image", files={"photo": ("a.jpg", fine, "image/jpeg")}).status_code == 200


def test_a_request_out_of_time_is_503_and_the_server_goes_on(served_index):
    with client_for(served_index, request_timeout_s=1e-6) as slow:
        assert slow.get("/api/search", params={"q": "a dog", "k": 3}).status_code == 503
        assert slow.get("/api/health").status_code == 200


def test_fuzzed_requests_are_never_answered_5xx(client):
    rng = random.Random(0)

    def text(n):
        return "".join(
            chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x2FFF), rng.randrange(0x1F300, 0x1F6FF)]))
            for _ in range(n)
        )

    statuses = []
    for _ in range(150):
        k = rng.choice([str(rng.randint(-(10**9), 10**9)), text(3), "", "1e9", "nan", "5"])
        route = rng.choice(["/api/search", "/api/explain", "/api/photos/", "/static/", "/api/search/image"])
        if route == "/api/search":
            response = client.get(route, params={"q": text(rng.randint(0, 700)), "k": k})
        elif route == "/api/explain":
            response = client.get(route, params={"q": text(rng.randint(0, 40)), "id": rng.choice([k, "0", text(5)])})
        elif route == "/api/search/image":
            payload = rng.randbytes(rng.randint(0, 3000))
            kind = rng.choice(["image/jpeg", "application/octet-stream", "text/plain"])
            if rng.random() < 0.5:
                response = client.post(route, params={"k": k}, files={"photo": ("x.jpg", payload, kind)})
            else:
                response = client.post(route, params={"k": k}, content=payload, headers={"content-type": kind})
        else:
            response = client.get(route + rng.choice([k, text(8), "../" * rng.randint(1, 5) + "etc/passwd"]))
        statuses.append(response.status_code)
        assert response.status_code < 500, (route, response.text)
        if response.status_code >= 400:
            assert "error" in response.json()
    assert any(s == 200 for s in statuses) and any(400 <= s < 500 for s in statuses)


# ---------------------------------------------------------------- access


def test_a_token_guards_the_api_but_not_the_page(served_index):
    token = "correct-horse-battery"
    with client_for(served_index, token=token) as client:
        assert client.get("/").status_code == 200
        assert_error(client.get("/api/health"), 401, "token")
        assert_error(client.get("/api/health", headers={"Authorization": "Bearer wrong-token"}), 401, "token")
        assert client.get("/api/health", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        client.cookies.set("scan_token", token)
        assert client.get("/api/photos/0/thumbnail").status_code == 200


def test_listening_beyond_loopback_needs_a_token_or_insecure():
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        ServeSettings(host=host).check()
    with pytest.raises(ConfigError, match="--token"):
        ServeSettings(host="0.0.0.0").check()
    with pytest.raises(ConfigError, match="--token"):
        ServeSettings(host="192.168.1.10").check()
    ServeSettings(host="0.0.0.0", token="long-enough-token").check()
    ServeSettings(host="0.0.0.0", insecure=True).check()
    with pytest.raises(ConfigError, match="at least 8"):
        ServeSettings(token="short").check()


def test_cors_is_off_unless_origins_are_given(served_index, client):
    origin = {"Origin": "https://elsewhere.example"}
    assert "access-control-allow-origin" not in client.get("/api/health", headers=origin).headers
    with client_for(served_index, cors_origins=["https://elsewhere.example"]) as open_client:
        allowed = open_client.get("/api/health", headers=origin)
        assert allowed.headers["access-control-allow-origin"] == "https://elsewhere.example"
