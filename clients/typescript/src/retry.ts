/**
 * When to retry and how long to wait: the same rules as the Python client's `retry` module.
 *
 * - Which failures: no answer at all (connection refused, reset or lost, a timeout), and the
 *   answers 429, 502, 503 and 504. Other answers are final.
 * - Which requests: a request that may be repeated without a second effect ("safe": GET,
 *   DELETE, search, a store carrying its Idempotency-Key, an update with `expected_version`) is
 *   retried on all of them. Any other request (an update without `expected_version`) only when
 *   the server cannot have acted on it: the connection was never made, or the answer is 429.
 * - How long: exponential backoff with full jitter, `random() * min(maxDelayMs, baseDelayMs *
 *   2^(n-1))` before retry n, but never sooner than the answer's `Retry-After` (seconds or an
 *   HTTP date). A `Retry-After` beyond `maxRetryAfterMs` is not waited for: the error is thrown
 *   at once, carrying `retryAfterMs`.
 */

export interface RetryPolicy {
  /** Requests per call, the first included; 1 turns retries off. */
  maxAttempts: number;
  /** The ceiling of the first backoff. */
  baseDelayMs: number;
  /** No backoff ceiling grows past this. */
  maxDelayMs: number;
  /** A longer `Retry-After` is not waited for. */
  maxRetryAfterMs: number;
}

export const DEFAULT_RETRY: Readonly<RetryPolicy> = Object.freeze({
  maxAttempts: 5,
  baseDelayMs: 500,
  maxDelayMs: 8000,
  maxRetryAfterMs: 60_000,
});

export const RETRY_STATUSES: ReadonlySet<number> = new Set([429, 502, 503, 504]);

/** A failure without an answer: `notSent` when the request never left the client. */
export type Failure = "notSent" | "lost";

/** What `onRetry` receives before the client waits `delayMs` and tries again. */
export interface RetryEvent {
  method: string;
  path: string;
  /** The attempt that failed, 1-based. */
  attempt: number;
  delayMs: number;
  /** The answer's status, or null when there was no answer. */
  status: number | null;
  /** The runtime's error when there was no answer. */
  error: unknown;
}

/** The policy with its checks; `policy` fills in what `overrides` leaves out. */
export function retryPolicy(overrides: Partial<RetryPolicy> = {}): RetryPolicy {
  const policy = { ...DEFAULT_RETRY, ...overrides };
  if (!(policy.maxAttempts >= 1)) throw new RangeError("maxAttempts must be at least 1");
  if (policy.baseDelayMs < 0 || policy.maxDelayMs < 0 || policy.maxRetryAfterMs < 0) {
    throw new RangeError("delays must not be negative");
  }
  return policy;
}

/** Milliseconds before retry number `retry` (1-based), for `u` uniform in [0, 1). */
export function backoff(policy: RetryPolicy, retry: number, u: number): number {
  return u * Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** Math.min(retry - 1, 62));
}

/** Milliseconds a `Retry-After` header asks for (delta-seconds or an HTTP date); null when
 * absent or unreadable. */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number | null {
  if (value === null) return null;
  const text = value.trim();
  if (/^[0-9]+$/.test(text)) return Number(text) * 1000;
  // An HTTP date names its weekday or month; Date.parse alone would take "5" as a year.
  if (!/[A-Za-z]/.test(text)) return null;
  const when = Date.parse(text);
  return Number.isNaN(when) ? null : Math.max(0, when - now);
}

export interface Outcome {
  /** Repeating the request has no second effect. */
  safe: boolean;
  /** The attempt that just failed, 1-based. */
  attempt: number;
  /** A draw uniform in [0, 1). */
  u: number;
  status?: number;
  failure?: Failure;
  retryAfterMs?: number | null;
}

/** Milliseconds to wait before the next attempt, or null to give up. */
export function retryDelay(policy: RetryPolicy, outcome: Outcome): number | null {
  const { safe, attempt, u, status, failure, retryAfterMs } = outcome;
  if (attempt >= policy.maxAttempts) return null;
  if (failure !== undefined) {
    if (failure !== "notSent" && !safe) return null;
  } else if (status === undefined || !RETRY_STATUSES.has(status) || (status !== 429 && !safe)) {
    return null;
  }
  let delay = backoff(policy, attempt, u);
  if (retryAfterMs !== undefined && retryAfterMs !== null) {
    if (retryAfterMs > policy.maxRetryAfterMs) return null;
    delay = Math.max(delay, retryAfterMs);
  }
  return delay;
}

// Error codes (Node's undici, as `error.cause.code`) of a connection that was never made.
const NOT_SENT_CODES = new Set([
  "ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "ENETUNREACH", "EHOSTUNREACH",
  "UND_ERR_CONNECT_TIMEOUT",
]);

/** How a failed `fetch` failed: `notSent` only when the runtime says the connection was
 * never made (Node tells; browsers do not, so there every failure counts as `lost`). */
export function classifyFailure(error: unknown): Failure {
  let cause: unknown = error;
  for (let depth = 0; depth < 4 && typeof cause === "object" && cause !== null; depth++) {
    const { code, errors } = cause as { code?: unknown; errors?: unknown };
    if (typeof code === "string" && NOT_SENT_CODES.has(code)) return "notSent";
    // Several addresses tried (an AggregateError): never sent if none of them connected.
    if (Array.isArray(errors) && errors.length > 0 &&
        errors.every((e) => classifyFailure(e) === "notSent")) return "notSent";
    cause = (cause as { cause?: unknown }).cause;
  }
  return "lost";
}
