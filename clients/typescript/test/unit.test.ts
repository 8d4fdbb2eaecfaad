// Unit tests of the client's pure logic with a scripted fake `fetch`: the retry schedule, which
// failures are retried for which requests, Retry-After, one Idempotency-Key per logical write,
// and the error classes. (test/live.test.ts runs against the real API.)
import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { describe, it } from "node:test";

import {
  APIError,
  MemoryClient,
  RateLimited,
  TransportError,
  Unavailable,
  VersionConflict,
  backoff,
  parseRetryAfter,
  retryDelay,
  type RetryEvent,
  type RetryPolicy,
} from "../src/index.js";
import * as errors from "../src/errors.js";

const MEMORY = {
  id: "6f1c0a52-5f0e-4a8e-9d0c-0a3f3e1e1c11", user_id: "alice", content: "Meeting with John",
  metadata: {}, importance: 5, version: 1, created_at: "2026-01-02T03:04:05Z",
  updated_at: "2026-01-02T03:04:05Z", entities: null, truncated: false,
};
const POLICY: RetryPolicy = { maxAttempts: 5, baseDelayMs: 500, maxDelayMs: 3000,
                              maxRetryAfterMs: 10_000 };

type Step = Response | Error;

/** A fake server answering each request with the next step (the last one repeats). */
class Script {
  readonly requests: { url: string; init: RequestInit }[] = [];
  readonly steps: Step[];
  constructor(...steps: Step[]) {
    this.steps = steps;
  }
  fetch = async (input: RequestInfo | URL, init: RequestInit = {}): Promise<Response> => {
    this.requests.push({ url: String(input), init });
    const step = this.steps.length > 1 ? this.steps.shift()! : this.steps[0]!;
    if (step instanceof Error) throw step;
    return step.clone();
  };
  header(name: string): (string | undefined)[] {
    return this.requests.map((r) => (r.init.headers as Record<string, string>)[name]);
  }
}

function answer(status: number, body: unknown = MEMORY, headers: Record<string, string> = {}) {
  return new Response(JSON.stringify(body), {
    status, headers: { "Content-Type": "application/json", ...headers } });
}

function error(status: number, code: string, extra: Record<string, unknown> = {},
               headers: Record<string, string> = {}) {
  return answer(status, { error: { code, message: `${code} happened`, field: null, ...extra } },
                headers);
}

/** What undici throws when the connection is refused (nothing was sent). */
function refused(): TypeError {
  return new TypeError("fetch failed", { cause: Object.assign(new Error("connect ECONNREFUSED"),
                                                              { code: "ECONNREFUSED" }) });
}

/** What undici throws when the server closes the connection after the request was sent. */
function reset(): TypeError {
  return new TypeError("fetch failed", { cause: Object.assign(new Error("other side closed"),
                                                              { code: "UND_ERR_SOCKET" }) });
}

function client(script: Script, u = 1, policy: RetryPolicy = POLICY) {
  const sleeps: number[] = [];
  const events: RetryEvent[] = [];
  const c = new MemoryClient({
    baseUrl: "http://memory.test/", apiKey: "svc-key", retry: policy, fetch: script.fetch,
    random: () => u, sleep: async (ms) => { sleeps.push(ms); },
    onRetry: (e) => events.push(e),
  });
  return { c, sleeps, events };
}

describe("the retry rules", () => {
  it("doubles the backoff ceiling up to the cap, with full jitter below it", () => {
    assert.deepEqual([1, 2, 3, 4, 5].map((n) => backoff(POLICY, n, 1)), [500, 1000, 2000, 3000, 3000]);
    assert.deepEqual([1, 2, 3].map((n) => backoff(POLICY, n, 0)), [0, 0, 0]);
    assert.equal(backoff(POLICY, 3, 0.25), 500);
    assert.equal(backoff(POLICY, 10_000, 1), 3000);
  });

  it("reads Retry-After as seconds or an HTTP date", () => {
    const now = Date.parse("2026-01-01T12:00:00Z");
    assert.equal(parseRetryAfter("7", now), 7000);
    assert.equal(parseRetryAfter(" 0 ", now), 0);
    assert.equal(parseRetryAfter("Thu, 01 Jan 2026 12:00:42 GMT", now), 42_000);
    assert.equal(parseRetryAfter("Thu, 01 Jan 2026 11:00:00 GMT", now), 0);
    for (const bad of [null, "soon", "-3", "1.5"]) assert.equal(parseRetryAfter(bad, now), null);
  });

  const table: [boolean, number | "notSent" | "lost", boolean][] = [
    [true, 429, true], [true, 502, true], [true, 503, true], [true, 504, true],
    [true, 500, false], [true, 404, false], [true, 409, false], [true, 422, false],
    [false, 429, true], [false, 503, false], [false, 502, false],
    [true, "notSent", true], [false, "notSent", true], [true, "lost", true], [false, "lost", false],
  ];
  for (const [safe, what, retried] of table) {
    it(`${retried ? "retries" : "does not retry"} ${what} for a${safe ? " safe" : "n unsafe"} request`, () => {
      const outcome = typeof what === "number" ? { status: what } : { failure: what };
      const delay = retryDelay(POLICY, { safe, attempt: 1, u: 1, ...outcome });
      assert.equal(delay, retried ? 500 : null);
    });
  }

  it("waits at least Retry-After, and not at all when it is too long", () => {
    const delay = (retryAfterMs: number, attempt = 1) =>
      retryDelay(POLICY, { safe: true, attempt, u: 1, status: 503, retryAfterMs });
    assert.equal(delay(2000), 2000);
    assert.equal(delay(0, 3), 2000);
    assert.equal(delay(10_000), 10_000);
    assert.equal(delay(10_001), null);
    assert.equal(retryDelay(POLICY, { safe: true, attempt: 5, u: 1, status: 503 }), null);
  });

  it("refuses a nonsense policy", () => {
    assert.throws(() => new MemoryClient({ baseUrl: "http://x", apiKey: "k",
                                           retry: { maxAttempts: 0 } }), RangeError);
  });
});

describe("the client", () => {
  it("retries a store with backoff, resending one Idempotency-Key and body", async () => {
    const script = new Script(error(503, "store_unavailable"), refused(),
                              error(502, "bad_gateway"),
                              answer(200, MEMORY, { "Idempotent-Replayed": "true" }));
    const { c, sleeps, events } = client(script);
    const memory = await c.store({ user_id: "alice", content: "Meeting with John", importance: 5 });
    assert.equal(memory.replayed, true);
    assert.equal(memory.content, "Meeting with John");
    assert.deepEqual(sleeps, [500, 1000, 2000]);
    const keys = script.header("Idempotency-Key");
    assert.equal(keys.length, 4);
    assert.ok(keys[0] && /^[0-9a-f-]{36}$/.test(keys[0]));
    assert.equal(new Set(keys).size, 1);
    assert.equal(new Set(script.requests.map((r) => r.init.body)).size, 1);
    assert.deepEqual(events.map((e) => [e.attempt, e.status]), [[1, 503], [2, null], [3, 502]]);
    await c.store({ user_id: "alice", content: "Meeting with John" });
    assert.ok(!keys.includes(script.header("Idempotency-Key").at(-1)));
  });

  it("sends a given Idempotency-Key as it is", async () => {
    const script = new Script(answer(201, { items: [MEMORY, MEMORY] }));
    const { c } = client(script);
    const batch = await c.storeBatch(
      { user_id: "alice", items: [{ content: "one" }, { content: "two" }] },
      { idempotencyKey: "import-2026-01-02" });
    assert.equal(batch.replayed, false);
    assert.equal(batch.items.length, 2);
    assert.deepEqual(script.header("Idempotency-Key"), ["import-2026-01-02"]);
  });

  it("waits as long as Retry-After says, in seconds or as a date", async () => {
    const later = new Date(Date.now() + 5000).toUTCString();
    const script = new Script(error(429, "rate_limited", {}, { "Retry-After": "3" }),
                              error(503, "unavailable", {}, { "Retry-After": later }),
                              answer(200));
    const { c, sleeps } = client(script, 0.1);
    await c.get("alice", MEMORY.id);
    assert.equal(sleeps[0], 3000);
    assert.ok(sleeps[1]! > 3000 && sleeps[1]! <= 5000, String(sleeps[1]));
  });

  it("throws at once when Retry-After is past the limit", async () => {
    const script = new Script(error(429, "rate_limited", {}, { "Retry-After": "3600" }));
    const { c, sleeps } = client(script);
    await assert.rejects(c.get("alice", MEMORY.id), (e: unknown) => {
      assert.ok(e instanceof RateLimited);
      assert.equal(e.retryAfterMs, 3_600_000);
      assert.equal(e.attempts, 1);
      return true;
    });
    assert.deepEqual(sleeps, []);
  });

  it("gives up after maxAttempts with the last error and the attempt count", async () => {
    const script = new Script(error(503, "embedding_unavailable"));
    const { c, sleeps } = client(script);
    await assert.rejects(c.search({ user_id: "alice", query: "roadmap" }), (e: unknown) => {
      assert.ok(e instanceof Unavailable);
      assert.equal(e.code, "embedding_unavailable");
      assert.equal(e.attempts, 5);
      return true;
    });
    assert.deepEqual(sleeps, [500, 1000, 2000, 3000]);

    const lost = new Script(refused());
    const { c: c2 } = client(lost, 1, { ...POLICY, maxAttempts: 3 });
    await assert.rejects(c2.get("alice", MEMORY.id), (e: unknown) => {
      assert.ok(e instanceof TransportError);
      assert.equal(e.attempts, 3);
      assert.ok(e.cause instanceof TypeError);
      return true;
    });
  });

  it("retries an unconditional update only where it cannot have applied", async () => {
    const dropped = new Script(reset());
    await assert.rejects(client(dropped).c.update(MEMORY.id, { user_id: "alice", content: "new" }),
                         TransportError);
    assert.equal(dropped.requests.length, 1);

    const unavailable = new Script(error(503, "store_unavailable"));
    await assert.rejects(
      client(unavailable).c.update(MEMORY.id, { user_id: "alice", content: "new" }), Unavailable);
    assert.equal(unavailable.requests.length, 1);

    const harmless = new Script(refused(), error(429, "rate_limited"), answer(200));
    await client(harmless).c.update(MEMORY.id, { user_id: "alice", content: "new" });
    assert.equal(harmless.requests.length, 3);
  });

  it("surfaces the conflict when a conditional update's first answer was lost", async () => {
    const script = new Script(reset(), error(409, "version_conflict", { current_version: 4 }));
    const { c } = client(script);
    await assert.rejects(
      c.update(MEMORY.id, { user_id: "alice", content: "new", expected_version: 3 }),
      (e: unknown) => {
        assert.ok(e instanceof VersionConflict);
        assert.equal(e.currentVersion, 4);
        assert.equal(e.attempts, 2);
        return true;
      });
    assert.equal(script.requests.length, 2);
  });

  it("retries a read that timed out", async () => {
    let calls = 0;
    const slowThenFine = async (_: RequestInfo | URL, init: RequestInit = {}) => {
      calls += 1;
      if (calls === 1) {
        return new Promise<Response>((_, reject) => init.signal?.addEventListener(
          "abort", () => reject(init.signal?.reason)));
      }
      return answer(200, { items: [], next_cursor: null });
    };
    const c = new MemoryClient({ baseUrl: "http://memory.test", apiKey: "k", timeoutMs: 20,
                                 fetch: slowThenFine, sleep: async () => {} });
    const page = await c.listPage({ user_id: "alice" });
    assert.deepEqual(page.items, []);
    assert.equal(calls, 2);
  });

  it("never retries the caller's own abort", async () => {
    const script = new Script(error(503, "unavailable"));
    const controller = new AbortController();
    const c = new MemoryClient({
      baseUrl: "http://memory.test", apiKey: "k", fetch: script.fetch,
      sleep: async () => { controller.abort(new Error("caller gave up")); },
    });
    await assert.rejects(c.get("alice", MEMORY.id, { signal: controller.signal }),
                         /caller gave up/);
    assert.equal(script.requests.length, 1);
  });

  it("follows cursors lazily", async () => {
    const pages: Record<string, [string | null, number]> = { "": ["c1", 2], c1: ["c2", 2], c2: [null, 1] };
    const seen: string[] = [];
    const fetch = async (input: RequestInfo | URL) => {
      const url = new URL(String(input));
      const cursor = url.searchParams.get("cursor") ?? "";
      seen.push(cursor);
      assert.equal(url.searchParams.get("metadata"), '{"topic":"work"}');
      const [next, n] = pages[cursor]!;
      return answer(200, { items: Array(n).fill(MEMORY), next_cursor: next });
    };
    const c = new MemoryClient({ baseUrl: "http://memory.test", apiKey: "k", fetch });
    const memories = c.list({ user_id: "alice", limit: 2, metadata: { topic: "work" } });
    assert.deepEqual(seen, []);
    const all = [];
    for await (const m of memories) all.push(m);
    assert.equal(all.length, 5);
    assert.deepEqual(seen, ["", "c1", "c2"]);
  });

  it("sends the key, the path and If-Match", async () => {
    const script = new Script(answer(200, { id: MEMORY.id, version: 2, deleted: true }));
    const { c } = client(script);
    const deleted = await c.delete("alice", MEMORY.id, { expectedVersion: 1 });
    assert.equal(deleted.version, 2);
    const request = script.requests[0]!;
    assert.equal(request.url, `http://memory.test/api/memories/${MEMORY.id}?user_id=alice`);
    assert.equal(request.init.method, "DELETE");
    const headers = request.init.headers as Record<string, string>;
    assert.equal(headers.Authorization, "Bearer svc-key");
    assert.equal(headers["If-Match"], '"1"');
  });
});

describe("search modes, related memories and entities", () => {
  const JOHN = { key: "person:john", name: "John", type: "person" };

  it("sends mode, filters and expansion, and reads the neighbours", async () => {
    const script = new Script(answer(200, {
      items: [{ ...MEMORY, score: 0.03, vector_rank: 1, text_rank: null },
              { ...MEMORY, id: "0b6f3a1e-2c44-4f0e-8d7a-5b8e9c0d1e22", score: 0, via: "graph",
                neighbour_of: MEMORY.id, shared_entities: [JOHN] }],
      mode: "vector", embedder: "hashing/384", pending_reembed: 0,
      graph: { source: "graph", degraded: false, reason: null } }));
    const { c } = client(script);
    const found = await c.search({ user_id: "alice", query: "John", mode: "vector", top_k: 3,
                                   metadata: { topic: "work" }, min_importance: 2,
                                   expand: "graph" });
    assert.deepEqual(JSON.parse(String(script.requests[0]!.init.body)), {
      user_id: "alice", query: "John", mode: "vector", top_k: 3, metadata: { topic: "work" },
      min_importance: 2, expand: "graph" });
    assert.deepEqual(found.items.map((h) => h.via), [undefined, "graph"]);
    assert.equal(found.items[1]!.shared_entities?.[0]?.key, "person:john");
    assert.equal(found.graph?.degraded, false);
  });

  it("reads related memories, entities and an entity's memories, retrying like reads", async () => {
    const related = { memory_id: MEMORY.id, memory_version: 1, graph_version: 1,
                      items: [{ memory: MEMORY, shared_entities: [JOHN] }],
                      degraded: false, source: "graph", reason: null };
    const script = new Script(error(503, "store_unavailable"), answer(200, related),
                              answer(200, { items: [{ ...JOHN, mentions: 2 }], degraded: false,
                                            source: "graph", reason: null, in_transit: 0 }),
                              answer(200, { items: [MEMORY], degraded: true, source: "postgres",
                                            reason: "1 changes are not in the graph yet",
                                            in_transit: 1 }));
    const { c, sleeps } = client(script);
    const r = await c.related("alice", MEMORY.id, { limit: 5 });
    assert.equal(sleeps.length, 1);
    assert.deepEqual(r.items.map((i) => i.shared_entities.map((e) => e.key)), [["person:john"]]);
    const e = await c.entities({ user_id: "alice", q: "jo", type: "person", limit: 10 });
    assert.equal(e.items[0]!.mentions, 2);
    const m = await c.entityMemories("alice", "person:john/smith", { limit: 7 });
    assert.equal(m.degraded, true);
    assert.equal(m.in_transit, 1);
    assert.deepEqual(script.requests.map((q) => q.url), [
      `http://memory.test/api/memories/${MEMORY.id}/related?user_id=alice&limit=5`,
      `http://memory.test/api/memories/${MEMORY.id}/related?user_id=alice&limit=5`,
      "http://memory.test/api/entities?user_id=alice&q=jo&type=person&limit=10",
      // the key is one path segment: ':' and '/' are escaped
      "http://memory.test/api/entities/person%3Ajohn%2Fsmith/memories?user_id=alice&limit=7"]);
  });
});

describe("the runtime's own network failures", () => {
  // Real sockets, so the classification meets the errors this runtime's fetch really throws.
  async function server(handler: http.RequestListener): Promise<[http.Server, string]> {
    const s = http.createServer(handler);
    await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
    return [s, `http://127.0.0.1:${(s.address() as AddressInfo).port}`];
  }
  const fast = { maxAttempts: 3, baseDelayMs: 1, maxDelayMs: 1, maxRetryAfterMs: 0 };
  const update = { user_id: "alice", content: "new" };

  it("retries even an unconditional update when the connection is refused", async () => {
    const [s, url] = await server(() => {});
    await new Promise((resolve) => s.close(resolve));  // nothing listens there now
    const c = new MemoryClient({ baseUrl: url, apiKey: "k", retry: fast });
    await assert.rejects(c.update(MEMORY.id, update), (e: unknown) =>
      e instanceof TransportError && e.attempts === 3);
  });

  it("retries a store but not an unconditional update when the connection drops", async () => {
    let requests = 0;
    const [s, url] = await server((request) => {
      requests += 1;
      request.socket.destroy();
    });
    try {
      const c = new MemoryClient({ baseUrl: url, apiKey: "k", retry: fast });
      await assert.rejects(c.update(MEMORY.id, update), (e: unknown) =>
        e instanceof TransportError && e.attempts === 1);
      assert.equal(requests, 1);
      await assert.rejects(c.store({ user_id: "alice", content: "x" }), (e: unknown) =>
        e instanceof TransportError && e.attempts === 3);
      assert.equal(requests, 4);
    } finally {
      s.closeAllConnections();
      await new Promise((resolve) => s.close(resolve));
    }
  });
});

describe("the errors", () => {
  const cases: [number, string, typeof APIError][] = [
    [422, "validation_error", errors.ValidationError],
    [422, "idempotency_conflict", errors.IdempotencyConflict],
    [401, "unauthorized", errors.Unauthorized], [403, "forbidden", errors.Forbidden],
    [404, "not_found", errors.NotFound], [409, "version_conflict", errors.VersionConflict],
    [409, "busy", errors.Busy], [409, "already_resolved", errors.AlreadyResolved],
    [413, "payload_too_large", errors.PayloadTooLarge], [429, "rate_limited", errors.RateLimited],
    [503, "unavailable", errors.Unavailable], [503, "store_unavailable", errors.StoreUnavailable],
    [503, "embedding_unavailable", errors.EmbeddingUnavailable],
    [500, "internal_error", errors.ServerError],
  ];
  for (const [status, code, Kind] of cases) {
    it(`maps ${code} to ${Kind.name}`, () => {
      const e = APIError.fromAnswer(status, JSON.stringify({ error: {
        code, message: "what went wrong", field: "metadata.x" } }));
      assert.equal(e.constructor, Kind);
      assert.equal(e.name, Kind.name);
      assert.deepEqual([e.status, e.code, e.detail, e.field],
                       [status, code, "what went wrong", "metadata.x"]);
      assert.equal(e.message, `${status} ${code}: what went wrong`);
      assert.ok(e instanceof errors.MemoryClientError && e instanceof Error);
    });
  }

  it("keeps families together", () => {
    assert.ok(APIError.fromAnswer(409, '{"error":{"code":"version_conflict"}}') instanceof errors.Conflict);
    assert.ok(APIError.fromAnswer(503, '{"error":{"code":"store_unavailable"}}') instanceof Unavailable);
  });

  const byStatus: [number, typeof APIError, string][] = [
    [502, Unavailable, "bad_gateway"], [504, Unavailable, "gateway_timeout"],
    [503, Unavailable, "unavailable"], [500, errors.ServerError, "internal_error"],
    [404, errors.NotFound, "not_found"], [418, APIError, "http_error"],
    [409, errors.Conflict, "http_error"],
  ];
  for (const [status, Kind, code] of byStatus) {
    it(`maps a ${status} that is not the API's JSON by its status`, () => {
      const e = APIError.fromAnswer(status, "<html>Bad Gateway</html>");
      assert.equal(e.constructor, Kind);
      assert.equal(e.code, code);
      assert.equal(e.field, null);
    });
  }

  it("maps an unknown code by its status", () => {
    const e = APIError.fromAnswer(409, '{"error":{"code":"new_kind","message":"m"}}');
    assert.equal(e.constructor, errors.Conflict);
    assert.equal(e.code, "new_kind");
  });

  it("reads the current version of a version conflict", () => {
    const e = APIError.fromAnswer(409, JSON.stringify({ error: {
      code: "version_conflict", message: "stale", field: "expected_version", current_version: 7 } }));
    assert.ok(e instanceof VersionConflict);
    assert.equal(e.currentVersion, 7);
  });

  it("calls a success answer that is not a JSON object a protocol error", async () => {
    for (const body of ["not json", "[1]"]) {
      const c = new MemoryClient({ baseUrl: "http://memory.test", apiKey: "k",
                                   fetch: async () => new Response(body, { status: 200 }) });
      await assert.rejects(c.get("alice", MEMORY.id), errors.ProtocolError);
    }
  });
});

describe("graph status and history", () => {
  const WITH_GRAPH = { ...MEMORY, graph: { status: "projected", projected_version: 1,
                                           since: "2026-01-02T03:04:06Z", timed_out: false } };
  const entry = (version: number) => ({
    memory_id: MEMORY.id, user_id: "alice", version,
    event: version === 1 ? "created" : "updated", content: `v${version}`,
    metadata: { n: version }, importance: 5, actor: "db:7",
    changed_at: `2026-01-02T03:0${version}:00Z`, truncated: false });

  it("reads the graph status and sends waitForGraph in seconds, retrying like a read", async () => {
    const script = new Script(error(503, "store_unavailable"), answer(200, WITH_GRAPH));
    const { c, sleeps } = client(script);
    const got = await c.get("alice", MEMORY.id, { waitForGraph: 2.5 });
    assert.equal(got.graph.status, "projected");
    assert.equal(got.graph.projected_version, 1);
    assert.equal(got.graph.timed_out, false);
    assert.equal(sleeps.length, 1);
    await c.get("alice", MEMORY.id, { waitForGraph: 0.1234 });
    await c.get("alice", MEMORY.id);
    assert.deepEqual(script.requests.map((r) => r.url), [
      `http://memory.test/api/memories/${MEMORY.id}?user_id=alice&wait_for_graph=2.5`,
      `http://memory.test/api/memories/${MEMORY.id}?user_id=alice&wait_for_graph=2.5`,
      `http://memory.test/api/memories/${MEMORY.id}?user_id=alice&wait_for_graph=0.123`,
      `http://memory.test/api/memories/${MEMORY.id}?user_id=alice`]);
  });

  it("gives a wait for the graph that much more time to answer", async () => {
    let calls = 0;
    // Answers after 150 ms: past the 20 ms timeout, within it plus the 1 s wait asked for.
    const slow = async (_: RequestInfo | URL, init: RequestInit = {}) => {
      calls += 1;
      return new Promise<Response>((resolve, reject) => {
        const timer = setTimeout(() => resolve(answer(200, WITH_GRAPH)), 150);
        init.signal?.addEventListener("abort", () => {
          clearTimeout(timer);
          reject(init.signal?.reason);
        });
      });
    };
    const c = new MemoryClient({ baseUrl: "http://memory.test", apiKey: "k", timeoutMs: 20,
                                 fetch: slow, sleep: async () => {},
                                 retry: { maxAttempts: 2 } });
    const got = await c.get("alice", MEMORY.id, { waitForGraph: 1 });
    assert.equal(got.graph.status, "projected");
    assert.equal(calls, 1);
    // Without the wait the same answer is too slow: timed out twice, then given up.
    await assert.rejects(c.get("alice", MEMORY.id), TransportError);
    assert.equal(calls, 3);
  });

  it("leaves a nonsense wait to the server to refuse, with no instant timeout", async () => {
    const slowRefusal = async (_: RequestInfo | URL, init: RequestInit = {}) =>
      new Promise<Response>((resolve, reject) => {
        const timer = setTimeout(() => resolve(error(422, "validation_error")), 30);
        init.signal?.addEventListener("abort", () => {
          clearTimeout(timer);
          reject(init.signal?.reason);
        });
      });
    const c = new MemoryClient({ baseUrl: "http://memory.test", apiKey: "k", fetch: slowRefusal,
                                 sleep: async () => {} });
    for (const nonsense of [Number.NaN, Number.POSITIVE_INFINITY, 1e12, -1]) {
      await assert.rejects(c.get("alice", MEMORY.id, { waitForGraph: nonsense }),
                           errors.ValidationError);
    }
  });

  it("pages through history newest first, lazily, following next_before_version", async () => {
    const seen: (string | null)[] = [];
    const fetch = async (input: RequestInfo | URL) => {
      const url = new URL(String(input));
      assert.equal(url.pathname, `/api/memories/${MEMORY.id}/history`);
      assert.equal(url.searchParams.get("user_id"), "alice");
      assert.equal(url.searchParams.get("limit"), "2");
      const before = url.searchParams.get("before_version");
      seen.push(before);
      const top = before === null ? 5 : Number(before) - 1;
      const versions = [top, top - 1].filter((v) => v >= 1);
      return answer(200, { items: versions.map(entry),
                           next_before_version: versions.at(-1)! > 1 ? versions.at(-1) : null });
    };
    const c = new MemoryClient({ baseUrl: "http://memory.test", apiKey: "k", fetch });
    const entries = c.history("alice", MEMORY.id, { limit: 2 });
    assert.deepEqual(seen, []);
    const all = [];
    for await (const e of entries) all.push(e);
    assert.deepEqual(all.map((e) => e.version), [5, 4, 3, 2, 1]);
    assert.deepEqual(seen, [null, "4", "2"]);
    assert.equal(all.at(-1)!.event, "created");
    assert.equal(all[0]!.actor, "db:7");

    const page = await c.historyPage("alice", MEMORY.id, { limit: 2, before_version: 3 });
    assert.deepEqual(page.items.map((e) => e.version), [2, 1]);
    assert.equal(page.next_before_version, null);
    const pages = [];
    for await (const p of c.historyPages("alice", MEMORY.id, { limit: 2, before_version: 4 })) {
      pages.push(p.items.map((e) => e.version));
    }
    assert.deepEqual(pages, [[3, 2], [1]]);
  });
});
