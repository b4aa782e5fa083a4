// WS-Kit 0.10 on Bun, unchanged: the server tests/test_client_wskit_bun.py points the
// typed client at, with its defaults, to check that it speaks plain WS-Kit to a server
// that advertises no extensions. Run as `bun run wskit_server.ts <port>` with
// NODE_PATH=benchmarks/bun/node_modules (the one WS-Kit install the repository has);
// prints "READY <port>" once listening.
import { createBunHandler } from "@ws-kit/bun";
import { createRouter, rpc, withZod, z } from "@ws-kit/zod";

const GetItem = rpc("GET_ITEM", { id: z.string() }, "ITEM", { id: z.string(), n: z.number() });
const Export = rpc("EXPORT", { rows: z.number() }, "EXPORTED", { done: z.number() });

const router = createRouter()
  .plugin(withZod())
  .rpc(GetItem, (ctx) => {
    if (ctx.payload.id === "missing") {
      ctx.error("NOT_FOUND", "no such item", { id: ctx.payload.id });
      return;
    }
    ctx.reply({ id: ctx.payload.id, n: 1 });
  })
  .rpc(Export, async (ctx) => {
    for (let done = 1; done < ctx.payload.rows; done++) {
      await ctx.progress({ done });
    }
    ctx.reply({ done: ctx.payload.rows });
  });

const port = Number(process.argv[2] ?? "0");
const { fetch, websocket } = createBunHandler(router);
const server = Bun.serve({ hostname: "127.0.0.1", port, fetch, websocket });
console.log(`READY ${server.port}`);
