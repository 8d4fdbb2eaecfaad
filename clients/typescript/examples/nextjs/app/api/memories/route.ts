// app/api/memories/route.ts: a Next.js route handler storing and searching a user's memories.
import { MemoryClient, ValidationError } from "memory-persistence-client";

// One client per server process; it retries on its own (and stores never twice).
const memories = new MemoryClient({
  baseUrl: process.env.MEMORY_API_URL!,
  apiKey: process.env.MEMORY_API_KEY!,
});

// Whose memories: your authentication decides. Here, a header set by an authenticating proxy.
function userOf(request: Request): string | null {
  return request.headers.get("x-user-id");
}

// POST /api/memories {"content": "...", "importance"?: 1-10}
export async function POST(request: Request): Promise<Response> {
  const user = userOf(request);
  if (!user) return new Response(null, { status: 401 });
  const { content, importance } = await request.json();
  try {
    const memory = await memories.store({ user_id: user, content, importance });
    return Response.json(memory, { status: 201 });
  } catch (error) {
    if (error instanceof ValidationError) {
      return Response.json({ field: error.field, message: error.detail }, { status: 422 });
    }
    throw error;
  }
}

// GET /api/memories?q=roadmap: the five best matches
export async function GET(request: Request): Promise<Response> {
  const user = userOf(request);
  if (!user) return new Response(null, { status: 401 });
  const query = new URL(request.url).searchParams.get("q") ?? "";
  const { items } = await memories.search({ user_id: user, query, top_k: 5 });
  return Response.json(items.map(({ id, content, score }) => ({ id, content, score })));
}
