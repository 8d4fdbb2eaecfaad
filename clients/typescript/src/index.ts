export {
  MemoryClient,
  VERSION,
  type BatchItem,
  type BatchResult,
  type BatchStoreRequest,
  type CallOptions,
  type ClientOptions,
  type Deleted,
  type DeleteOptions,
  type Entity,
  type ListQuery,
  type Memory,
  type Page,
  type ScoredMemory,
  type SearchRequest,
  type SearchResult,
  type StoredMemory,
  type StoreRequest,
  type UpdateRequest,
  type WriteOptions,
} from "./client.js";
export * from "./errors.js";
export {
  DEFAULT_RETRY,
  backoff,
  parseRetryAfter,
  retryDelay,
  type RetryEvent,
  type RetryPolicy,
} from "./retry.js";
export type { components, paths } from "./schema.js";
