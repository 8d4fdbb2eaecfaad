// The README's Next.js route handler is the example the live tests run, character for character.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { it } from "node:test";

const PACKAGE = new URL("../../", import.meta.url);  // dist/test -> the package

it("shows examples/nextjs/app/api/memories/route.ts in the README", async () => {
  const readme = await readFile(new URL("README.md", PACKAGE), "utf8");
  const example = await readFile(
    new URL("examples/nextjs/app/api/memories/route.ts", PACKAGE), "utf8");
  const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
  assert.ok(blocks.includes(example), "README's route handler differs from the example file");
});
