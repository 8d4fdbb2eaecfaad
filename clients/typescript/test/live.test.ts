// The client against the live API: MEMORY_API_URL and MEMORY_API_KEY name a running web process
// on a fresh database (tests/clients/test_typescript_client.py starts one and runs `npm test`).
// Without them these tests are skipped; the Python suite never runs without them.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import {
  IdempotencyConflict,
  MemoryClient,
  NotFound,
  Unauthorized,
  ValidationError,
  VersionConflict,
  type Memory,
  type RetryEvent,
} from "../src/index.js";

const API = process.env.MEMORY_API_URL;
const KEY = process.env.MEMORY_API_KEY ?? "";
const skip = API ? false : "MEMORY_API_URL is not set";
const ROOT = fileURLToPath(new URL("../..", import.meta.url));  // dist/test -> the package

async function all<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

describe("the live API", { skip }, () => {
  const client = new MemoryClient({ baseUrl: API ?? "", apiKey: KEY });

  it("serves the OpenAPI document src/schema.ts was generated from", async () => {
    const { stdout } = await promisify(execFile)(
      process.execPath, ["scripts/generate-schema.mjs", "--check", `${API}/openapi.json`],
      { cwd: ROOT });
    assert.match(stdout, /matches/);
  });

  it("answers every memory route", async () => {
    const stored = await client.store(
      { user_id: "ts-alice", content: "Meeting with John about the Q4 roadmap",
        metadata: { topic: "work" }, importance: 7 },
      { idempotencyKey: "ts-req-1" });
    assert.equal(stored.replayed, false);
    assert.equal(stored.version, 1);
    const again = await client.store(
      { user_id: "ts-alice", content: "Meeting with John about the Q4 roadmap",
        metadata: { topic: "work" }, importance: 7 },
      { idempotencyKey: "ts-req-1" });
    assert.equal(again.replayed, true);
    assert.equal(again.id, stored.id);
    await assert.rejects(client.store({ user_id: "ts-alice", content: "other" },
                                      { idempotencyKey: "ts-req-1" }), IdempotencyConflict);

    const batch = await client.storeBatch({ user_id: "ts-alice", items: [
      { content: "Lunch with Maria", metadata: { topic: "food" }, importance: 3 },
      { content: "Call the dentist on Monday" },
      { content: "Q4 planning offsite in Lisbon", metadata: { topic: "work" } },
    ] });
    assert.deepEqual(batch.items.map((m) => m.content), [
      "Lunch with Maria", "Call the dentist on Monday", "Q4 planning offsite in Lisbon"]);

    const got: Memory = await client.get("ts-alice", stored.id);
    assert.equal(got.content, stored.content);
    assert.deepEqual(got.metadata, { topic: "work" });

    const listed = await all(client.list({ user_id: "ts-alice", limit: 3 }));
    assert.equal(listed.length, 4);
    assert.equal(new Set(listed.map((m) => m.id)).size, 4);
    const pages = await all(client.pages({ user_id: "ts-alice", limit: 3 }));
    assert.deepEqual(pages.map((p) => p.items.length), [3, 1]);
    const work = await all(client.list({ user_id: "ts-alice", metadata: { topic: "work" },
                                         min_importance: 5 }));
    assert.deepEqual(work.map((m) => m.content).sort(), [
      "Meeting with John about the Q4 roadmap", "Q4 planning offsite in Lisbon"]);

    const changed = await client.update(stored.id, {
      user_id: "ts-alice", content: "Meeting with John about Q1", expected_version: 1 });
    assert.equal(changed.version, 2);
    await assert.rejects(
      client.update(stored.id, { user_id: "ts-alice", importance: 2, expected_version: 1 }),
      (e: unknown) => e instanceof VersionConflict && e.currentVersion === 2 && e.attempts === 1);
    assert.equal((await client.update(stored.id, { user_id: "ts-alice", importance: 9 })).version, 3);

    const hits = await client.search({ user_id: "ts-alice", query: "Meeting with John",
                                       top_k: 2, metadata: { topic: "work" } });
    assert.ok(hits.items.length >= 1);
    assert.equal(hits.items[0]!.id, stored.id);
    assert.ok(hits.items[0]!.score > 0 && hits.items[0]!.score <= 1.0001);

    await assert.rejects(client.delete("ts-alice", stored.id, { expectedVersion: 2 }),
                         VersionConflict);
    const deleted = await client.delete("ts-alice", stored.id, { expectedVersion: 3 });
    assert.deepEqual([deleted.id, deleted.version, deleted.deleted], [stored.id, 4, true]);
    await assert.rejects(client.get("ts-alice", stored.id), NotFound);
    await assert.rejects(client.get("ts-bob", batch.items[0]!.id), NotFound);

    await assert.rejects(client.store({ user_id: "ts-alice", content: "x", importance: 11 }),
                         (e: unknown) => e instanceof ValidationError && e.field === "importance");
    await assert.rejects(client.get("ts-alice", "not-a-uuid"),
                         (e: unknown) => e instanceof ValidationError && e.field === "memory_id");
    const stranger = new MemoryClient({ baseUrl: API ?? "", apiKey: "not-a-key" });
    await assert.rejects(stranger.get("ts-alice", stored.id), Unauthorized);
  });

  it("searches by mode and reads related memories and entities", async () => {
    const roadmap = await client.store({ user_id: "ts-frank", importance: 8,
                                         content: "Meeting with John about the Q4 roadmap" });
    await client.store({ user_id: "ts-frank", content: "Buy oat milk" });
    for (const mode of ["vector", "text", "hybrid"] as const) {
      const found = await client.search({ user_id: "ts-frank", query: "Q4 roadmap John", mode,
                                          top_k: 1, expand: "graph" });
      assert.equal(found.mode, mode);
      assert.equal(found.items[0]!.id, roadmap.id);
      assert.ok(found.graph, "expand reports how the neighbours were found");
    }
    // No worker runs here: the graph has nothing yet, and the answers say so.
    const related = await client.related("ts-frank", roadmap.id, { limit: 5 });
    assert.deepEqual([related.memory_id, related.memory_version, related.graph_version],
                     [roadmap.id, 1, null]);
    assert.equal(related.degraded, true);
    const entities = await client.entities({ user_id: "ts-frank", q: "jo" });
    assert.equal(entities.degraded, true);
    assert.ok(entities.in_transit >= 2);
    const mentioning = await client.entityMemories("ts-frank", "person:john");
    assert.deepEqual(mentioning.items, []);
    await assert.rejects(client.related("ts-other", roadmap.id), NotFound);
    await assert.rejects(client.entityMemories("ts-frank", "no-type"),
                         (e: unknown) => e instanceof ValidationError && e.field === "key");
  });

  it("reports the graph status, waits for it, and keeps every version's history", async () => {
    const stored = await client.store({ user_id: "ts-gina", metadata: { topic: "work" },
                                        content: "Meeting with John about the Q4 roadmap" });
    // No worker runs here: the wait ends with the version still pending.
    const waited = await client.get("ts-gina", stored.id, { waitForGraph: 0.2 });
    assert.deepEqual([waited.graph.status, waited.graph.projected_version,
                      waited.graph.timed_out], ["pending", null, true]);
    const now = await client.get("ts-gina", stored.id);
    assert.equal(now.graph.status, "pending");
    assert.ok(now.graph.timed_out === null || now.graph.timed_out === undefined);
    await assert.rejects(client.get("ts-gina", stored.id, { waitForGraph: 31 }),
                         (e: unknown) => e instanceof ValidationError);

    await client.update(stored.id, { user_id: "ts-gina", content: "Meeting with John about Q1",
                                     metadata: { topic: "plans" }, expected_version: 1 });
    const entries = await all(client.history("ts-gina", stored.id, { limit: 1 }));
    assert.deepEqual(entries.map((e) => [e.version, e.event, e.content]), [
      [2, "updated", "Meeting with John about Q1"],
      [1, "created", "Meeting with John about the Q4 roadmap"]]);
    assert.deepEqual(entries.map((e) => e.metadata), [{ topic: "plans" }, { topic: "work" }]);
    // Who made each change: the key's id, never the key.
    assert.ok(entries.every((e) => typeof e.actor === "string" && e.actor !== KEY));
    const page = await client.historyPage("ts-gina", stored.id, { limit: 1 });
    assert.equal(page.next_before_version, 2);

    await client.delete("ts-gina", stored.id);
    const kept = await all(client.history("ts-gina", stored.id));
    assert.deepEqual(kept.map((e) => e.event), ["deleted", "updated", "created"]);
    await assert.rejects(client.historyPage("ts-other", stored.id), NotFound);
  });

  it("stores once when the answer to a store is lost and the store is retried", async () => {
    // A proxy that lets the store reach the API, then cuts the connection instead of passing
    // the answer on: the memory is committed, the client never hears of it and retries.
    let lose = true;
    const proxy = http.createServer((request, response) => {
      const upstream = http.request(`${API}${request.url}`, {
        method: request.method, headers: request.headers,
      }, (answer) => {
        if (lose && request.method === "POST") {
          lose = false;
          answer.resume();
          request.socket.destroy();
          return;
        }
        response.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(response);
      });
      request.pipe(upstream);
    });
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    const { port } = proxy.address() as AddressInfo;
    const events: RetryEvent[] = [];
    try {
      const viaProxy = new MemoryClient({
        baseUrl: `http://127.0.0.1:${port}`, apiKey: KEY, onRetry: (e) => events.push(e),
        retry: { baseDelayMs: 10, maxDelayMs: 50 },
      });
      const memory = await viaProxy.store({ user_id: "ts-dave", content: "Lost answer, kept memory" });
      assert.equal(lose, false, "the proxy should have lost one answer");
      assert.equal(memory.replayed, true);
      assert.deepEqual(events.map((e) => [e.attempt, e.status]), [[1, null]]);
      const listed = await all(client.list({ user_id: "ts-dave" }));
      assert.deepEqual(listed.map((m) => m.id), [memory.id]);
    } finally {
      proxy.closeAllConnections();
      await new Promise((resolve) => proxy.close(resolve));
    }
  });
});

describe("the Next.js route handler of the README", { skip }, () => {
  it("stores and searches through the live API", async () => {
    const route = await import("../examples/nextjs/app/api/memories/route.js");
    const as = { "x-user-id": "ts-erin", "Content-Type": "application/json" };
    const stored = await route.POST(new Request("http://app.test/api/memories", {
      method: "POST", headers: as,
      body: JSON.stringify({ content: "Ship the Q4 roadmap review", importance: 8 }) }));
    assert.equal(stored.status, 201);
    assert.equal((await stored.json()).user_id, "ts-erin");

    const found = await route.GET(new Request("http://app.test/api/memories?q=Q4%20roadmap",
                                              { headers: as }));
    assert.equal(found.status, 200);
    const hits = await found.json() as { content: string }[];
    assert.deepEqual(hits.map((h) => h.content), ["Ship the Q4 roadmap review"]);

    const invalid = await route.POST(new Request("http://app.test/api/memories", {
      method: "POST", headers: as, body: JSON.stringify({ content: "x", importance: 99 }) }));
    assert.equal(invalid.status, 422);
    assert.equal((await invalid.json()).field, "importance");
    const anonymous = await route.GET(new Request("http://app.test/api/memories?q=x"));
    assert.equal(anonymous.status, 401);
  });
});
