/**
 * `MemoryClient`: the memory API over the standard `fetch`, so it runs on Node 18+, in
 * browsers and on edge runtimes. Request and answer types come from `schema.ts`, generated from
 * the API's OpenAPI document (the suite checks it against the live one), so a route or field
 * the API does not have fails to compile.
 */

import {
  APIError,
  ProtocolError,
  TransportError,
} from "./errors.js";
import {
  classifyFailure,
  parseRetryAfter,
  retryDelay,
  retryPolicy,
  type Failure,
  type RetryEvent,
  type RetryPolicy,
} from "./retry.js";
import type { components, paths } from "./schema.js";

// Every type below is read off a route of the generated `paths` (method, status, content), so
// a route, method or field the API does not document fails to compile.
type Method = "get" | "post" | "patch" | "delete";
type Operation<P extends keyof paths, M extends Method> = NonNullable<paths[P][M]>;
type JsonBody<P extends keyof paths, M extends Method> =
  Operation<P, M> extends { requestBody: { content: { "application/json": infer B } } } ? B
    : never;
type JsonAnswer<P extends keyof paths, M extends Method, S extends number> =
  Operation<P, M> extends { responses: { [K in S]: { content: { "application/json": infer R } } } }
    ? R : never;
type Query<P extends keyof paths, M extends Method> =
  Operation<P, M> extends { parameters: { query?: infer Q } } ? NonNullable<Q> : never;

export type Memory = JsonAnswer<"/api/memories/{memory_id}", "patch", 200>;
/** A memory as `get` returns it: with where its projection into the graph stands. */
export type MemoryWithGraph = JsonAnswer<"/api/memories/{memory_id}", "get", 200>;
/** `status`: pending, failed, dead or projected; `timed_out` only with `waitForGraph`. */
export type GraphProjection = MemoryWithGraph["graph"];
/** A page of a memory's history, newest version first. */
export type HistoryPage = JsonAnswer<"/api/memories/{memory_id}/history", "get", 200>;
/** One version: what it held, who made it (`actor`, the key's id) and when. */
export type HistoryEntry = HistoryPage["items"][number];
/** The history's query: page size and `before_version` (a page's `next_before_version`). */
export type HistoryQuery = Omit<Query<"/api/memories/{memory_id}/history", "get">, "user_id">;
export type Page = JsonAnswer<"/api/memories", "get", 200>;
export type Deleted = JsonAnswer<"/api/memories/{memory_id}", "delete", 200>;
export type SearchResult = JsonAnswer<"/api/memories/search", "post", 200>;
export type ScoredMemory = SearchResult["items"][number];
export type Entity = components["schemas"]["Entity"];
export type StoreRequest = JsonBody<"/api/memories", "post">;
export type BatchStoreRequest = JsonBody<"/api/memories/batch", "post">;
export type BatchItem = BatchStoreRequest["items"][number];
export type UpdateRequest = JsonBody<"/api/memories/{memory_id}", "patch">;
export type SearchRequest = JsonBody<"/api/memories/search", "post">;
export type RelatedResult = JsonAnswer<"/api/memories/{memory_id}/related", "get", 200>;
export type RelatedItem = RelatedResult["items"][number];
export type EntitiesResult = JsonAnswer<"/api/entities", "get", 200>;
export type EntityItem = EntitiesResult["items"][number];
export type EntityMemoriesResult = JsonAnswer<"/api/entities/{key}/memories", "get", 200>;
/** The entities' query: `q` matches part of the name, `type` the type (e.g. person). */
export type EntitiesQuery = Query<"/api/entities", "get">;

/** A stored memory; `replayed` when its Idempotency-Key had stored it before (say, on an
 * attempt whose answer was lost). */
export type StoredMemory = JsonAnswer<"/api/memories", "post", 201> & { replayed: boolean };
export type BatchResult = JsonAnswer<"/api/memories/batch", "post", 201> & { replayed: boolean };

/** The listing's query, with `metadata` as an object (sent as JSON) and no cursor. */
export type ListQuery =
  Omit<Query<"/api/memories", "get">, "metadata" | "cursor"> &
  { metadata?: Record<string, unknown> };

export interface ClientOptions {
  /** The server's root, e.g. `http://127.0.0.1:8000` (paths start with `/api/`). */
  baseUrl: string;
  /** A service key (an admin key works too). */
  apiKey: string;
  retry?: Partial<RetryPolicy>;
  /** Per attempt, from sending to the end of the answer's body. Default 30 s. */
  timeoutMs?: number;
  /** A `fetch` to use instead of the global one. */
  fetch?: typeof fetch;
  headers?: Record<string, string>;
  onRetry?: (event: RetryEvent) => void;
  /** Uniform in [0, 1): the jitter's draw (tests make it fixed). */
  random?: () => number;
  /** How to wait between attempts (tests record instead). */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}

export interface CallOptions {
  /** Aborts the call, its retries and waits included; an abort is never retried. */
  signal?: AbortSignal;
}

export interface GetOptions extends CallOptions {
  /** Seconds (at most 30) the server may wait for the current version to be projected into
   * the graph (or failed, or dead) before answering; each attempt's timeout grows by it. */
  waitForGraph?: number;
}

export interface WriteOptions extends CallOptions {
  /** Defaults to a new random key per call; every retry of the call resends it. */
  idempotencyKey?: string;
}

export interface DeleteOptions extends CallOptions {
  /** Refuse with VersionConflict unless this is the current version (`If-Match`). */
  expectedVersion?: number;
}

interface Call {
  method: Uppercase<Method>;
  path: keyof paths;
  pathParams?: Record<string, string>;
  query?: Record<string, string | number | undefined | null>;
  body?: unknown;
  headers?: Record<string, string>;
  /** Repeating it has no second effect, so any failure may be retried. */
  safe: boolean;
  signal?: AbortSignal | undefined;
  /** Time the server may take on purpose (a wait asked for), added to each attempt's. */
  extraTimeMs?: number;
}

interface Answer {
  body: unknown;
  headers: Headers;
}

type Attempt =
  | { kind: "answer"; answer: Answer }
  | { kind: "error"; status: number; text: string; headers: Headers }
  | { kind: "failure"; failure: Failure; error: unknown };

const VERSION = "0.1.0";

export class MemoryClient {
  readonly retry: RetryPolicy;
  readonly #base: string;
  readonly #headers: Record<string, string>;
  readonly #timeoutMs: number;
  readonly #fetch: typeof fetch;
  readonly #onRetry: ((event: RetryEvent) => void) | undefined;
  readonly #random: () => number;
  readonly #sleep: (ms: number, signal?: AbortSignal) => Promise<void>;

  constructor(options: ClientOptions) {
    this.retry = retryPolicy(options.retry);
    this.#base = options.baseUrl.replace(/\/+$/, "");
    this.#headers = {
      Authorization: `Bearer ${options.apiKey}`,
      Accept: "application/json",
      ...options.headers,
    };
    this.#timeoutMs = options.timeoutMs ?? 30_000;
    // Bound to globalThis: some runtimes refuse a `fetch` called as a method of another object.
    this.#fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.#onRetry = options.onRetry;
    this.#random = options.random ?? Math.random;
    this.#sleep = options.sleep ?? sleep;
  }

  /** Store a memory. Retries resend one Idempotency-Key, so a retried store never makes a
   * second memory. */
  async store(body: StoreRequest, options: WriteOptions = {}): Promise<StoredMemory> {
    const { body: memory, headers } = await this.#send({
      method: "POST", path: "/api/memories", body, safe: true, signal: options.signal,
      headers: { "Idempotency-Key": options.idempotencyKey ?? newKey() },
    });
    return { ...(memory as Omit<StoredMemory, "replayed">), replayed: replayed(headers) };
  }

  /** Store several memories of one user in one transaction (all or none). */
  async storeBatch(body: BatchStoreRequest, options: WriteOptions = {}): Promise<BatchResult> {
    const { body: batch, headers } = await this.#send({
      method: "POST", path: "/api/memories/batch", body, safe: true, signal: options.signal,
      headers: { "Idempotency-Key": options.idempotencyKey ?? newKey() },
    });
    return { ...(batch as Omit<BatchResult, "replayed">), replayed: replayed(headers) };
  }

  /** One memory with its `graph` status; NotFound when missing, deleted, or another user's.
   * With `waitForGraph` (seconds) the server answers once the current version is projected,
   * failed or dead, or when the wait runs out (`graph.timed_out`). */
  async get(userId: string, memoryId: string,
            options: GetOptions = {}): Promise<MemoryWithGraph> {
    const wait = options.waitForGraph;
    const { body } = await this.#send({
      method: "GET", path: "/api/memories/{memory_id}", pathParams: { memory_id: memoryId },
      query: { user_id: userId, wait_for_graph: wait === undefined ? undefined : seconds(wait) },
      safe: true, signal: options.signal,
      // The server refuses more than 30 s (or nonsense) with a 422: never wait past 60 s.
      extraTimeMs: wait !== undefined && Number.isFinite(wait)
        ? Math.min(Math.max(0, wait), 60) * 1000 : 0,
    });
    return body as MemoryWithGraph;
  }

  /** One page of a memory's history (a deleted one's too), newest version first. */
  async historyPage(userId: string, memoryId: string, query: HistoryQuery = {},
                    options: CallOptions = {}): Promise<HistoryPage> {
    const { body } = await this.#send({
      method: "GET", path: "/api/memories/{memory_id}/history",
      pathParams: { memory_id: memoryId },
      query: { user_id: userId, limit: query.limit, before_version: query.before_version },
      safe: true, signal: options.signal,
    });
    return body as HistoryPage;
  }

  /** Every page of a memory's history in turn, following `next_before_version`. */
  async *historyPages(userId: string, memoryId: string, query: HistoryQuery = {},
                      options: CallOptions = {}): AsyncGenerator<HistoryPage, void> {
    let before: number | null = query.before_version ?? null;
    do {
      const page: HistoryPage = await this.historyPage(
        userId, memoryId, { ...query, before_version: before }, options);
      yield page;
      before = page.next_before_version ?? null;
    } while (before !== null);
  }

  /** Every kept version of a memory, newest first, with who made each change and when,
   * fetched a page at a time. */
  async *history(userId: string, memoryId: string, query: HistoryQuery = {},
                 options: CallOptions = {}): AsyncGenerator<HistoryEntry, void> {
    for await (const page of this.historyPages(userId, memoryId, query, options)) {
      yield* page.items;
    }
  }

  /** One page of the user's memories, newest first; pass `next_cursor` for the next. */
  async listPage(query: ListQuery & { cursor?: string | null },
                 options: CallOptions = {}): Promise<Page> {
    const { metadata, ...rest } = query;
    const { body } = await this.#send({
      method: "GET", path: "/api/memories", safe: true, signal: options.signal,
      query: { ...rest, metadata: metadata === undefined ? undefined : JSON.stringify(metadata) },
    });
    return body as Page;
  }

  /** Every page in turn, following `next_cursor`; each is fetched when reached. */
  async *pages(query: ListQuery, options: CallOptions = {}): AsyncGenerator<Page, void> {
    let cursor: string | null = null;
    do {
      const page: Page = await this.listPage({ ...query, cursor }, options);
      yield page;
      cursor = page.next_cursor ?? null;
    } while (cursor !== null);
  }

  /** Every memory of the user, newest first, fetched a page at a time. */
  async *list(query: ListQuery, options: CallOptions = {}): AsyncGenerator<Memory, void> {
    for await (const page of this.pages(query, options)) yield* page.items;
  }

  /**
   * Change a memory (`metadata` replaces the whole object). With `expected_version` the server
   * refuses a stale write with VersionConflict and the call is retried like any safe one;
   * without it, only when the server cannot have applied it (no connection made, or 429).
   */
  async update(memoryId: string, body: UpdateRequest,
               options: CallOptions = {}): Promise<Memory> {
    const conditional = body.expected_version !== undefined && body.expected_version !== null;
    const { body: memory } = await this.#send({
      method: "PATCH", path: "/api/memories/{memory_id}", pathParams: { memory_id: memoryId },
      body, safe: conditional, signal: options.signal,
    });
    return memory as Memory;
  }

  /** Delete a memory (VersionConflict if `expectedVersion` is stale). */
  async delete(userId: string, memoryId: string, options: DeleteOptions = {}): Promise<Deleted> {
    const { body } = await this.#send({
      method: "DELETE", path: "/api/memories/{memory_id}", pathParams: { memory_id: memoryId },
      query: { user_id: userId }, safe: true, signal: options.signal,
      headers: options.expectedVersion === undefined ? {}
        : { "If-Match": `"${options.expectedVersion}"` },
    });
    return body as Deleted;
  }

  /** The user's memories that best match the query, best first: `mode` "vector" (meaning),
   * "text" (words) or "hybrid" (both, the default); `metadata` and `min_importance` filter;
   * `expand: "graph"` adds the hits' graph neighbours (`via: "graph"`). */
  async search(body: SearchRequest, options: CallOptions = {}): Promise<SearchResult> {
    // A read, though sent with POST: repeating it is harmless.
    const { body: result } = await this.#send({
      method: "POST", path: "/api/memories/search", body, safe: true, signal: options.signal,
    });
    return result as SearchResult;
  }

  /** Memories sharing entities with this one, most shared first (NotFound when the memory is
   * missing, deleted, or another user's); `degraded` when the graph was down or behind. */
  async related(userId: string, memoryId: string, query: { limit?: number } = {},
                options: CallOptions = {}): Promise<RelatedResult> {
    const { body } = await this.#send({
      method: "GET", path: "/api/memories/{memory_id}/related",
      pathParams: { memory_id: memoryId }, query: { user_id: userId, limit: query.limit },
      safe: true, signal: options.signal,
    });
    return body as RelatedResult;
  }

  /** The user's entities with their mention counts, most mentioned first. */
  async entities(query: EntitiesQuery, options: CallOptions = {}): Promise<EntitiesResult> {
    const { body } = await this.#send({
      method: "GET", path: "/api/entities", query, safe: true, signal: options.signal,
    });
    return body as EntitiesResult;
  }

  /** The user's memories that mention the entity `key` (`type:name`, as `entities` gives
   * it), most important first. */
  async entityMemories(userId: string, key: string, query: { limit?: number } = {},
                       options: CallOptions = {}): Promise<EntityMemoriesResult> {
    const { body } = await this.#send({
      method: "GET", path: "/api/entities/{key}/memories", pathParams: { key },
      query: { user_id: userId, limit: query.limit }, safe: true, signal: options.signal,
    });
    return body as EntityMemoriesResult;
  }

  // -- sending, with retries ------------------------------------------------------------------

  async #send(call: Call): Promise<Answer> {
    const url = this.#url(call);
    const headers: Record<string, string> = { ...this.#headers, ...call.headers };
    let payload: string | undefined;
    if (call.body !== undefined) {
      payload = JSON.stringify(call.body);
      headers["Content-Type"] = "application/json";
    }
    for (let attempt = 1; ; attempt++) {
      const result = await this.#attempt(call, url, headers, payload);
      if (result.kind === "answer") return result.answer;
      let delay: number | null;
      if (result.kind === "failure") {
        delay = retryDelay(this.retry, {
          safe: call.safe, attempt, u: this.#random(), failure: result.failure });
        if (delay === null) {
          const cause = result.error;
          throw new TransportError(
            `${call.method} ${call.path}: ${cause instanceof Error ? cause.message : cause}`,
            attempt, cause);
        }
      } else {
        const retryAfterMs = parseRetryAfter(result.headers.get("Retry-After"));
        delay = retryDelay(this.retry, {
          safe: call.safe, attempt, u: this.#random(), status: result.status, retryAfterMs });
        if (delay === null) {
          throw APIError.fromAnswer(result.status, result.text, attempt, retryAfterMs);
        }
      }
      this.#onRetry?.({
        method: call.method, path: call.path, attempt, delayMs: delay,
        status: result.kind === "error" ? result.status : null,
        error: result.kind === "failure" ? result.error : null,
      });
      await this.#sleep(delay, call.signal);
    }
  }

  async #attempt(call: Call, url: string, headers: Record<string, string>,
                 payload: string | undefined): Promise<Attempt> {
    call.signal?.throwIfAborted();
    // One signal for the caller's abort and this attempt's timeout.
    const controller = new AbortController();
    const timeoutMs = this.#timeoutMs + (call.extraTimeMs ?? 0);
    const timedOut = new Error(`no answer within ${timeoutMs} ms`);
    timedOut.name = "TimeoutError";
    const timer = setTimeout(() => controller.abort(timedOut), timeoutMs);
    const forward = (): void => controller.abort(call.signal?.reason);
    call.signal?.addEventListener("abort", forward, { once: true });
    try {
      const response = await this.#fetch(url, {
        method: call.method, headers, body: payload ?? null, signal: controller.signal,
      });
      // The body is read inside the timeout too: a connection lost mid-body is a failure.
      const text = await response.text();
      if (!response.ok) {
        return { kind: "error", status: response.status, text, headers: response.headers };
      }
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        throw new ProtocolError(`${call.method} ${call.path}: answer ${response.status} is not JSON`);
      }
      if (typeof body !== "object" || body === null || Array.isArray(body)) {
        throw new ProtocolError(`${call.method} ${call.path}: answer is not a JSON object`);
      }
      return { kind: "answer", answer: { body, headers: response.headers } };
    } catch (error) {
      if (error instanceof ProtocolError) throw error;
      if (call.signal?.aborted) throw call.signal.reason;  // the caller's: never retried
      if (controller.signal.aborted) return { kind: "failure", failure: "lost", error: timedOut };
      if (error instanceof TypeError) {  // how fetch reports a network failure
        return { kind: "failure", failure: classifyFailure(error), error };
      }
      throw error;
    } finally {
      clearTimeout(timer);
      call.signal?.removeEventListener("abort", forward);
    }
  }

  #url(call: Call): string {
    const path = call.path.replace(/\{([^}]+)\}/g, (_, name: string) => {
      const value = call.pathParams?.[name];
      if (value === undefined) throw new TypeError(`${call.path}: missing ${name}`);
      return encodeURIComponent(value);
    });
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(call.query ?? {})) {
      if (value !== undefined && value !== null) query.set(key, String(value));
    }
    const search = query.toString();
    return `${this.#base}${path}${search ? `?${search}` : ""}`;
  }
}

/** Seconds as the server takes them: "5" or "2.5", at most three decimals, no exponent. */
function seconds(value: number): string {
  return String(Number(value.toFixed(3)));
}

function replayed(headers: Headers): boolean {
  return headers.get("Idempotent-Replayed")?.toLowerCase() === "true";
}

/** A random UUID; Node 18 has no global `crypto` unless flagged, so fall back. */
function newKey(): string {
  const crypto = (globalThis as { crypto?: Crypto }).crypto;
  if (crypto?.randomUUID) return crypto.randomUUID();
  const bytes = new Uint8Array(16);
  if (crypto?.getRandomValues) crypto.getRandomValues(bytes);
  else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
  bytes[6] = (bytes[6]! & 0x0f) | 0x40;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export { VERSION };
