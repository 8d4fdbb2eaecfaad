/**
 * Errors: one class per `error.code` of the API's error body
 * `{"error": {"code", "message", "field", ...}}`, chosen by code, else by HTTP status (a
 * proxy's 502 page has no code). The same tree as the Python client:
 *
 *     MemoryClientError
 *     ├── TransportError        no HTTP answer (connection refused or lost, timeout)
 *     ├── ProtocolError         an answer that is not the documented JSON
 *     └── APIError              .status .code .detail .field .body .retryAfterMs .attempts
 *         ├── ValidationError (422)  IdempotencyConflict (422)  Unauthorized (401)
 *         ├── Forbidden (403)  NotFound (404)  PayloadTooLarge (413)  RateLimited (429)
 *         ├── Conflict (409): VersionConflict (.currentVersion), Busy, AlreadyResolved
 *         ├── Unavailable (502, 503, 504): StoreUnavailable, EmbeddingUnavailable
 *         └── ServerError (other 5xx)
 *
 * `attempts` says how many requests the call made: an error after a retry may follow an
 * earlier attempt the server applied whose answer was lost (e.g. a VersionConflict whose
 * `currentVersion` is the caller's expected version + 1).
 */

export class MemoryClientError extends Error {
  override name = "MemoryClientError";
  attempts = 1;
}

/** No HTTP answer after the retries the policy allows; `cause` is the runtime's error. */
export class TransportError extends MemoryClientError {
  override name = "TransportError";
  constructor(message: string, attempts: number, cause: unknown) {
    super(message, { cause });
    this.attempts = attempts;
  }
}

/** A success answer whose body is not what the API documents. */
export class ProtocolError extends MemoryClientError {
  override name = "ProtocolError";
}

export interface ErrorDetail {
  code?: unknown;
  message?: unknown;
  field?: unknown;
  [extra: string]: unknown;
}

/** An error answer of the API. */
export class APIError extends MemoryClientError {
  override name = "APIError";
  static readonly codes: readonly string[] = [];
  readonly status: number;
  readonly code: string;
  readonly field: string | null;
  readonly body: ErrorDetail;
  readonly retryAfterMs: number | null;
  /** The message as the server wrote it (`message` adds the status and code). */
  readonly detail: string;

  constructor(status: number, code: string, message: string, field: string | null = null,
              body: ErrorDetail = {}, retryAfterMs: number | null = null, attempts = 1) {
    super(`${status} ${code}: ${message}`);
    this.status = status;
    this.code = code;
    this.field = field;
    this.body = body;
    this.retryAfterMs = retryAfterMs;
    this.attempts = attempts;
    this.detail = message;
  }

  /** The exception for an error answer (`text` is its body). */
  static fromAnswer(status: number, text: string, attempts = 1,
                    retryAfterMs: number | null = null): APIError {
    let detail: ErrorDetail = {};
    try {
      const payload: unknown = JSON.parse(text);
      if (isObject(payload) && isObject(payload.error)) detail = payload.error;
    } catch {
      // Not the API's JSON (a proxy's page): classified by status below.
    }
    const code = typeof detail.code === "string" ? detail.code
      : STATUS_CODES[status] ?? "http_error";
    const message = typeof detail.message === "string" ? detail.message : code;
    const field = typeof detail.field === "string" ? detail.field : null;
    const Kind = BY_CODE.get(code) ?? byStatus(status);
    return new Kind(status, code, message, field, detail, retryAfterMs, attempts);
  }
}

export class ValidationError extends APIError {
  override name = "ValidationError";
  static override readonly codes = ["validation_error"];
}
export class IdempotencyConflict extends APIError {
  override name = "IdempotencyConflict";
  static override readonly codes = ["idempotency_conflict"];
}
export class Unauthorized extends APIError {
  override name = "Unauthorized";
  static override readonly codes = ["unauthorized"];
}
export class Forbidden extends APIError {
  override name = "Forbidden";
  static override readonly codes = ["forbidden"];
}
export class NotFound extends APIError {
  override name = "NotFound";
  static override readonly codes = ["not_found"];
}
/** A 409: the request conflicts with the current state. */
export class Conflict extends APIError {
  override name = "Conflict";
}
/** The expected version is stale; `currentVersion` is the memory's version now. */
export class VersionConflict extends Conflict {
  override name = "VersionConflict";
  static override readonly codes = ["version_conflict"];
  get currentVersion(): number | null {
    const value = this.body.current_version;
    return typeof value === "number" ? value : null;
  }
}
export class Busy extends Conflict {
  override name = "Busy";
  static override readonly codes = ["busy"];
}
export class AlreadyResolved extends Conflict {
  override name = "AlreadyResolved";
  static override readonly codes = ["already_resolved"];
}
export class PayloadTooLarge extends APIError {
  override name = "PayloadTooLarge";
  static override readonly codes = ["payload_too_large"];
}
export class RateLimited extends APIError {
  override name = "RateLimited";
  static override readonly codes = ["rate_limited"];
}
/** A backend (or a gateway in front of the API) is unavailable; worth retrying later. */
export class Unavailable extends APIError {
  override name = "Unavailable";
  static override readonly codes: readonly string[] = [
    "unavailable", "not_ready", "bad_gateway", "gateway_timeout"];
}
export class StoreUnavailable extends Unavailable {
  override name = "StoreUnavailable";
  static override readonly codes = ["store_unavailable"];
}
export class EmbeddingUnavailable extends Unavailable {
  override name = "EmbeddingUnavailable";
  static override readonly codes = ["embedding_unavailable"];
}
export class ServerError extends APIError {
  override name = "ServerError";
  static override readonly codes = ["internal_error"];
}

type ErrorClass = (typeof APIError) & { readonly codes: readonly string[] };

const BY_CODE = new Map<string, ErrorClass>(
  ([ValidationError, IdempotencyConflict, Unauthorized, Forbidden, NotFound, VersionConflict,
    Busy, AlreadyResolved, PayloadTooLarge, RateLimited, Unavailable, StoreUnavailable,
    EmbeddingUnavailable, ServerError] as ErrorClass[])
    .flatMap((Kind) => Kind.codes.map((code) => [code, Kind] as const)),
);
const STATUS_CODES: Record<number, string> = {
  401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "payload_too_large",
  422: "validation_error", 429: "rate_limited", 500: "internal_error", 502: "bad_gateway",
  503: "unavailable", 504: "gateway_timeout",
};
const BY_STATUS: Record<number, ErrorClass> = {
  401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
  422: ValidationError, 429: RateLimited, 502: Unavailable, 503: Unavailable, 504: Unavailable,
};

function byStatus(status: number): ErrorClass {
  return BY_STATUS[status] ?? (status >= 500 ? ServerError : APIError);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
