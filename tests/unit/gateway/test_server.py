from streamcart.gateway.server import init_app

AUTH = {"idempotency_key": "order-1", "amount_cents": 1200, "currency": "EUR", "token": "tok_approve"}


async def test_an_authorization_is_idempotent_by_key(aiohttp_client, tmp_path):
    client = await aiohttp_client(init_app(tmp_path / "journal.jsonl"))
    first = await client.post("/v1/authorizations", json=AUTH)
    second = await client.post("/v1/authorizations", json=AUTH)
    assert first.status == 201
    assert second.status == 200
    assert (await first.json()) == (await second.json())
    ledger = await (await client.get("/v1/authorizations")).json()
    assert len(ledger["authorizations"]) == 1


async def test_reusing_a_key_for_another_amount_is_a_conflict(aiohttp_client, tmp_path):
    client = await aiohttp_client(init_app(tmp_path / "journal.jsonl"))
    await client.post("/v1/authorizations", json=AUTH)
    clash = await client.post("/v1/authorizations", json={**AUTH, "amount_cents": 1})
    assert clash.status == 409


async def test_a_flaky_token_fails_transiently_then_approves_once(aiohttp_client, tmp_path):
    client = await aiohttp_client(init_app(tmp_path / "journal.jsonl"))
    request = {**AUTH, "token": "tok_flaky_2"}
    statuses = [(await client.post("/v1/authorizations", json=request)).status for _ in range(4)]
    assert statuses == [503, 503, 201, 200]
    (listed,) = (await (await client.get("/v1/authorizations")).json())["authorizations"]
    assert listed["attempts"] == 3  # the two refused and the one that made it; the repeat found it made


async def test_capture_void_and_refund_follow_the_card_lifecycle(aiohttp_client, tmp_path):
    client = await aiohttp_client(init_app(tmp_path / "journal.jsonl"))
    auth = await (await client.post("/v1/authorizations", json=AUTH)).json()
    base = f"/v1/authorizations/{auth['authorization_id']}"
    assert (await (await client.post(f"{base}/capture")).json())["status"] == "captured"
    assert (await client.post(f"{base}/capture")).status == 200  # idempotent
    assert (await client.post(f"{base}/void")).status == 409  # too late to void
    assert (await (await client.post(f"{base}/refund")).json())["status"] == "refunded"


async def test_the_ledger_survives_a_restart(aiohttp_client, tmp_path):
    journal = tmp_path / "journal.jsonl"
    first = await aiohttp_client(init_app(journal))
    auth = await (await first.post("/v1/authorizations", json=AUTH)).json()
    again = await aiohttp_client(init_app(journal))
    replay = await again.post("/v1/authorizations", json=AUTH)
    assert replay.status == 200
    assert (await replay.json())["authorization_id"] == auth["authorization_id"]


async def test_an_invalid_request_is_a_422_with_a_json_error(aiohttp_client, tmp_path):
    client = await aiohttp_client(init_app(tmp_path / "journal.jsonl"))
    response = await client.post("/v1/authorizations", data=b"{not json")
    assert response.status == 422
    assert (await response.json())["error"]["code"] == "invalid_request"


async def test_an_authorization_records_the_traceparent_it_was_called_with(aiohttp_client, tmp_path):
    client = await aiohttp_client(init_app(tmp_path / "journal.jsonl"))
    traceparent = "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"
    created = await (await client.post("/v1/authorizations", json=AUTH, headers={"traceparent": traceparent})).json()
    untraced = await (await client.post("/v1/authorizations", json={**AUTH, "idempotency_key": "order-2"})).json()
    assert created["traceparent"] == traceparent
    assert untraced["traceparent"] is None


async def test_a_record_written_after_a_torn_line_survives_the_next_restart(aiohttp_client, tmp_path):
    journal = tmp_path / "journal.jsonl"
    journal.write_text('{"amount_cents": 100, "authorization_id": "auth_torn')  # a write cut short, no newline
    first = await aiohttp_client(init_app(journal))
    auth = await (await first.post("/v1/authorizations", json=AUTH)).json()
    again = await aiohttp_client(init_app(journal))
    ledger = await (await again.get("/v1/authorizations")).json()
    assert [a["authorization_id"] for a in ledger["authorizations"]] == [auth["authorization_id"]]
